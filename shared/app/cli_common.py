"""What every verb of the two command-line tools leans on (`shared.app.cli` and its verb modules):
user-facing errors as one `Error:` line, --quiet for the libraries' own progress bars, and the
one path from --preset / --config / --set to a validated config.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import click

from shared.app.errors import TrainingDiverged, TrainingInterrupted
from shared.config import Config, ConfigError, apply_overrides, preset
from shared.data.clips import DataError
from shared.data.video import VideoError
from shared.model.checkpoint import CheckpointError

# Errors about what the user asked for: shown as one line (T2S_DEBUG=1 shows the traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, VideoError, CheckpointError, TrainingDiverged, FileNotFoundError,
    ValueError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The library's user-facing errors as one clean `Error:` line (T2S_DEBUG=1: traceback)."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("T2S_DEBUG"):
            raise
        raise click.ClickException(str(e)) from e
    except TrainingInterrupted as e:  # a signal stopped training after saving (e.g. the demo)
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)


def quiet_libraries(quiet: bool) -> None:
    """Under --quiet, silence the libraries' own progress bars too (transformers 5 draws a
    "Loading weights" bar for the text encoder; huggingface_hub one per download). Set before
    they are imported, and switched off in any already imported; nothing is imported here."""
    if not quiet:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()


def load_config(preset_name: str | None, config_file: str | None,
                overrides: tuple[str, ...]) -> Config:
    """A preset or a config.json, then `--set` overrides, then validation (the CLI's one path)."""
    if preset_name and config_file:
        raise ConfigError("give --preset or --config, not both")
    config = Config.load(config_file) if config_file else preset(preset_name or "small")
    return apply_overrides(config, overrides).validate()


# The scripts (benchmarks/*.py, `python -m shared.app.figure`) share the tools' help settings.
SCRIPT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def run_script(command: click.Command, argv: list[str] | None = None,
               prog_name: str | None = None) -> int:
    """Run a script's click command and return its exit code instead of exiting: the
    callback's int (None: 0); --help 0; a usage error shown on stderr, 2."""
    try:
        code = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return code if isinstance(code, int) else 0


def parse_script(command: click.Command, argv: list[str] | None = None) -> object:
    """Parse a command line with a click command whose callback returns the parsed options
    (e.g. a types.SimpleNamespace); --help and usage errors exit as argparse's parse_args did
    (0 and 2)."""
    try:
        parsed = command.main(args=argv, standalone_mode=False)
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code) from None
    except click.Abort:
        click.echo("Aborted!", err=True)
        raise SystemExit(1) from None
    if isinstance(parsed, int):  # --help (or -h) printed the help: nothing to run
        raise SystemExit(parsed)
    return parsed


def spread_nargs(argv: list[str], option: str) -> list[str]:
    """argparse's `nargs="+"` for a click `multiple=True` option: `OPT a b c` becomes
    `OPT a OPT b OPT c` (values up to the next `-`-token); as with argparse the last `OPT`
    given wins. A bare `OPT` is left for click to refuse."""
    out: list[str] = []
    last: list[int] = []  # positions in `out` of the latest OPT's expansion
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out.extend(argv[i:])
            break
        if token == option:
            values = []
            while i + 1 + len(values) < len(argv) and not argv[i + 1 + len(values)].startswith("-"):
                values.append(argv[i + 1 + len(values)])
            if values:
                out = [t for k, t in enumerate(out) if k not in set(last)]
                last = []
                for value in values:
                    last.extend((len(out), len(out) + 1))
                    out.extend((option, value))
                i += 1 + len(values)
                continue
        elif token.startswith(option + "="):
            out = [t for k, t in enumerate(out) if k not in set(last)]
            last = [len(out)]
        out.append(token)
        i += 1
    return out
