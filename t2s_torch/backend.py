"""t2s_torch as the application's `shared.app.backend.Backend`: what `t2s-torch` hands to the
shared verbs. Each member imports its module on call, so building it imports no torch."""

from __future__ import annotations

from pathlib import Path

from shared.app.backend import Backend


def trainer(config, **kwargs):
    from t2s_torch.train import Trainer

    return Trainer(config, **kwargs)


def sample_checkpoint(*args, **kwargs) -> list[Path]:
    from t2s_torch.sample import sample_checkpoint

    return sample_checkpoint(*args, **kwargs)


def load_sampler(*args, **kwargs):
    from t2s_torch.sample import load_sampler

    return load_sampler(*args, **kwargs)


def latent_vae(name_or_path: str | Path, device: str | None = None):
    from t2s_torch.vae import LatentVAE

    return LatentVAE.from_pretrained(name_or_path, device=device)


def load_i3d(path: str | Path):
    from t2s_torch.i3d import load_i3d

    return load_i3d(path)


def run_checks(device: str | None = None):
    from t2s_torch.doctor import run_checks

    return run_checks(device)


BACKEND = Backend(name="t2s_torch", tool="t2s-torch", trainer=trainer,
                  sample_checkpoint=sample_checkpoint, latent_vae=latent_vae, load_i3d=load_i3d,
                  run_checks=run_checks, load_sampler=load_sampler)
