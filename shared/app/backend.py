"""The backend interface: what the application (CLI verbs, demo, eval) asks of a backend.

The core defines it and never imports a backend: each backend package builds one `Backend` in
its own `backend.py` (`BACKEND`), and an entry point (`t2s-torch`, `t2s-mlx`, `t2s-demo`) hands
that object to `shared.app.cli.make_group` / `shared.app.demo.run_demo`. Every member that touches
the framework is a small function importing its module on call, so building the object (and so
`t2s-torch --help`) imports no torch or MLX.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.app.doctor import CheckResult


def _cannot_serve(*args: Any, **kwargs: Any) -> Any:
    """A backend object built without `load_sampler` (a test's fake) has nothing to serve."""
    raise NotImplementedError("this backend cannot load a sampler")


@dataclass(frozen=True)
class Backend:
    """One backend as the application sees it.

    name: the package's name, as reports record it (report.json's "backend").
    tool: its command-line tool (`t2s-torch`).
    trainer(config, *, device, progress, log): a ready Trainer (`.train(resume=)`, `.device`,
        `.world.is_main`, `.log`).
    sample_checkpoint(checkpoint, prompts, out_dir, sample, *, device, use_ema, progress, vae):
        generate, write the GIFs and grid.gif; returns the written clips.
    latent_vae(path_or_id, device=None): a loaded LatentVAE (`encode`, `decode`, `hash`).
    load_i3d(path): the Kinetics I3D feature extractor of eval's FVD.
    run_checks(device): `doctor`'s checks.
    load_sampler(checkpoint, *, device, use_ema, vae): a checkpoint loaded once for many
        samplings (`shared.app.sampling_driver.LoadedSampler`; the `serve` verb).
    """

    name: str
    tool: str
    trainer: Callable[..., Any]
    sample_checkpoint: Callable[..., list[Path]]
    latent_vae: Callable[..., Any]
    load_i3d: Callable[[str | Path], Any]
    run_checks: Callable[[str | None], Iterable[CheckResult]]
    load_sampler: Callable[..., Any] = _cannot_serve
