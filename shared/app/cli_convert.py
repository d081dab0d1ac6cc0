"""The command line behind convert/torch_to_mlx.py and convert/mlx_to_torch.py: click over
`shared.model.convert`, which does the work with numpy and safetensors only."""

from __future__ import annotations

from collections.abc import Callable

import click

from shared.app.cli_common import run_script
from shared.config import ConfigError
from shared.model.checkpoint import CheckpointError
from shared.model.convert import DTYPES, convert

HELP = """\
Convert a text2sign checkpoint written by the {source} backend into the {target} layout, with
numpy and safetensors only (neither torch nor mlx is imported).

IN is a checkpoint directory (config.json, model.safetensors, ema.safetensors,
optimizer.safetensors, trainer_state.json), a training run or its checkpoints/ folder (its latest
checkpoint), or one .safetensors file. OUT is the directory (or file) to write.

What is converted:
  model, EMA     every tensor; conv weights move {src_conv} -> {dst_conv},
                 everything else is the same in both layouts (same keys).
  optimizer      AdamW moments {src_opt} -> {dst_opt}, laid out like their
                 weights; the step counter {src_step} -> {dst_step}.
  config.json    copied unchanged.
  trainer_state  step, micro_batch, grad_accum, ema_updates carry over.
Not carried: the RNG state (and torch's fp16 GradScaler state). A resumed run continues with the
{target} backend's own randomness; exact resume holds within one backend.

--dtype casts model and EMA weights (bf16 rounds to nearest even, as torch does); optimizer
moments keep their dtype. The output is written under a temporary name beside OUT and renamed
into place; IN is never modified. Refusals print one line naming the fix and exit with 2.
"""

_SIDES = {
    "torch": {"conv": "(O, I, kF, kH, kW)", "opt": "<p>.exp_avg / .exp_avg_sq",
              "step": "per parameter (<p>.step)"},
    "mlx": {"conv": "(O, kF, kH, kW, I)", "opt": "<p>.m / .v", "step": "global (step)"},
}


def help_text(source: str, target: str) -> str:
    """The command's help: HELP for this direction, each paragraph kept as laid out, and what
    IN and OUT are."""
    s, t = _SIDES[source], _SIDES[target]
    text = HELP.format(source=source, target=target, src_conv=s["conv"], dst_conv=t["conv"],
                       src_opt=s["opt"], dst_opt=t["opt"], src_step=s["step"],
                       dst_step=t["step"])
    text += ("\nArguments:\n"
             "  IN   checkpoint directory or .safetensors file\n"
             "  OUT  where to write the converted copy\n")
    # "\b" before a paragraph: click prints it as written instead of re-wrapping it
    return "\n\n".join("\b\n" + p for p in text.strip().split("\n\n"))


def build_command(source: str, target: str,
                  out: Callable[[str], None] = print) -> click.Command:
    """One direction's click command; it returns the exit code (2 for a refusal)."""

    @click.command(help=help_text(source, target),
                   context_settings={"help_option_names": ["-h", "--help"],
                                     "max_content_width": 100})
    @click.argument("src", metavar="IN")
    @click.argument("dst", metavar="OUT")
    @click.option("--dtype", type=click.Choice(sorted(DTYPES)), default=None,
                  help="cast model and EMA weights (default: keep their dtype)")
    @click.option("--force", is_flag=True, help="replace an existing OUT")
    @click.option("--config", default=None, metavar="CONFIG_JSON",
                  help="for a single .safetensors file: the config.json to check keys and "
                       "shapes against (default: the one beside the file, if any)")
    def command(src: str, dst: str, dtype: str | None, force: bool, config: str | None) -> int:
        try:
            report = convert(src, dst, source, target, dtype=dtype, force=force,
                             config=config)
        except (CheckpointError, ConfigError, OSError) as e:
            message = " ".join(str(e).split())
            click.echo(f"error: {message}", err=True)
            return 2
        for line in report.lines():
            out(line)
        return 0

    return command


def main(argv: list[str] | None = None, *, source: str, target: str,
         out: Callable[[str], None] = print) -> int:
    """Run one direction's command line; returns the exit code (2 for a refusal or a usage
    error, as click reports it)."""
    return run_script(build_command(source, target, out), argv,
                      prog_name=f"convert/{source}_to_{target}.py")
