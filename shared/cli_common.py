"""What every verb of the two command-line tools leans on (`shared.cli` and its verb modules):
user-facing errors as one `Error:` line, --quiet for the libraries' own progress bars, and the
one path from --preset / --config / --set to a validated config.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import click

from shared.checkpoint import CheckpointError
from shared.config import Config, ConfigError, apply_overrides, preset
from shared.data import DataError
from shared.errors import TrainingDiverged, TrainingInterrupted
from shared.video import VideoError

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
