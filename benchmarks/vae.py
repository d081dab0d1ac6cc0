"""What latent mode costs and saves: the real-size Stable Diffusion VAE on one clip, both backends.

    python benchmarks/vae.py [--frames 28] [--size 128] [--skip-mlx] [--mlx-budget 300]
                             [--threads N] [--json FILE]

Builds an AutoencoderKL with the SD VAE's architecture (block_out_channels 128/256/512/512,
layers_per_block 2, latent_channels 4, norm_num_groups 32; the config is written here by hand, no
download) with random weights, saves it with save_pretrained to a temporary folder, and then, in
one fresh process per backend (so each peak RSS is its own), loads that folder the way training
does (`t2s_torch.vae.LatentVAE`, `t2s_mlx.vae.LatentVAE`), encodes one clip of `frames` random
frames at `size` px and decodes the latents back, printing wall time and peak RSS. Random weights
cost exactly what trained ones do.

It also prints the UNet side of the trade (shared.model.flops, `small` preset): training FLOPs per
clip at frames x size x size pixels against frames x size/8 x size/8 x 4 latents.

The MLX CPU backend is far slower than torch's on Linux (its Metal backend is the one that
matters); the MLX child first times one frame and skips the clip if the estimate exceeds
`--mlx-budget` seconds, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click

from shared.app.cli_common import SCRIPT_SETTINGS, run_script

SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
              layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
              scaling_factor=0.18215)


def peak_rss_mib() -> float:
    from shared.data.batching import max_rss_bytes

    return max_rss_bytes() / 2**20


def build_vae(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**SD_VAE).save_pretrained(folder)


def child(backend: str, folder: str, frames: int, size: int, budget: float,
          threads: int = 0) -> dict:
    """Encode + decode one clip in this process; a JSON-able report."""
    import numpy as np

    clip = np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    report: dict = {"backend": backend, "frames": frames, "size": size}
    start = time.perf_counter()
    if backend == "torch":
        import torch

        from t2s_torch.vae import LatentVAE

        if threads:
            torch.set_num_threads(threads)
        vae = LatentVAE.from_pretrained(folder, device="cpu")
        report["threads"] = torch.get_num_threads()
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            one = vae.encode(clip[:1])
        report["encode_gflops_per_frame"] = counter.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as counter:
            vae.decode(one)
        report["decode_gflops_per_frame"] = counter.get_total_flops() / 1e9
    else:
        import mlx.core as mx

        from t2s_mlx.vae import LatentVAE

        vae = LatentVAE.from_pretrained(folder, device="cpu")
        report["mlx"] = mx.__version__
    report["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    one = vae.encode(clip[:1])  # also warms up
    middle = time.perf_counter()
    vae.decode(one)
    report["one_frame_encode_decode_s"] = time.perf_counter() - start
    report["one_frame_encode_s"] = middle - start
    estimate = report["one_frame_encode_decode_s"] * frames
    if estimate > budget:
        report["skipped"] = (f"one frame took {report['one_frame_encode_decode_s']:.1f} s; the "
                             f"clip would take ~{estimate:.0f} s > --mlx-budget {budget:.0f} s")
        report["peak_rss_mib"] = peak_rss_mib()
        return report
    start = time.perf_counter()
    latents = vae.encode(clip)
    report["encode_s"] = time.perf_counter() - start
    start = time.perf_counter()
    decoded = vae.decode(latents)
    report["decode_s"] = time.perf_counter() - start
    report["latents"] = list(latents.shape)
    report["decoded"] = list(decoded.shape)
    report["peak_rss_mib"] = peak_rss_mib()
    return report


def flops_ratio(frames: int, size: int) -> dict:
    from shared.config import preset
    from shared.model.flops import training_flops_per_sample

    pixels = preset("small")
    pixels.data.num_frames, pixels.data.image_size = frames, size
    latents = preset("small")
    latents.data.num_frames, latents.data.image_size = frames, size // 8
    latents.model.in_channels = latents.model.out_channels = 4
    p, q = training_flops_per_sample(pixels), training_flops_per_sample(latents)
    return {"pixel_train_gflops": p / 1e9, "latent_train_gflops": q / 1e9, "ratio": p / q}


@click.command(help=__doc__.split("\n")[0], context_settings=SCRIPT_SETTINGS)
@click.option("--frames", type=int, default=28)
@click.option("--size", type=int, default=128)
@click.option("--skip-mlx", is_flag=True)
@click.option("--mlx-budget", type=float, default=300.0)
@click.option("--threads", type=int, default=0,
              help="torch CPU threads (default: torch's own choice)")
@click.option("--json", default=None)
@click.option("--child", nargs=2, default=None, metavar="BACKEND FOLDER", hidden=True)
def command(**options: object) -> int:
    return run(SimpleNamespace(**options))


def main(argv: list[str] | None = None) -> int:
    return run_script(command, argv)


def run(args: SimpleNamespace) -> int:
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.frames, args.size,
                               args.mlx_budget if args.child[0] == "mlx" else float("inf"),
                               args.threads)))
        return 0

    results = {"flops": flops_ratio(args.frames, args.size), "load_average": os.getloadavg()}
    f = results["flops"]
    print(f"UNet (small preset) training per clip at {args.frames}x{args.size}x{args.size}: "
          f"pixels {f['pixel_train_gflops']:.0f} GFLOPs, latents ({args.size // 8}x"
          f"{args.size // 8}x4) {f['latent_train_gflops']:.1f} GFLOPs: {f['ratio']:.1f}x less")
    with tempfile.TemporaryDirectory(prefix="t2s-vae-bench-") as tmp:
        build_vae(Path(tmp))
        size_mb = (Path(tmp) / "diffusion_pytorch_model.safetensors").stat().st_size / 1e6
        print(f"SD-architecture VAE, random weights: {size_mb:.0f} MB of fp32 weights")
        for backend in ("torch", "mlx"):
            if backend == "mlx" and args.skip_mlx:
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--child", backend, tmp, "--frames", str(args.frames),
                 "--size", str(args.size), "--mlx-budget", str(args.mlx_budget),
                 "--threads", str(args.threads)],
                capture_output=True, text=True)
            if out.returncode:
                print(f"{backend}: failed\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[backend] = r
            if "skipped" in r:
                print(f"{backend} (CPU): skipped the clip: {r['skipped']}; peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB")
                continue
            if "encode_gflops_per_frame" in r:
                print(f"VAE per {args.size}x{args.size} frame: encode "
                      f"{r['encode_gflops_per_frame']:.1f} GFLOPs, decode "
                      f"{r['decode_gflops_per_frame']:.1f} GFLOPs")
            print(f"{backend} (CPU): encode {args.frames} frames {r['encode_s']:.1f} s, decode "
                  f"{r['decode_s']:.1f} s (load {r['load_s']:.1f} s), latents {r['latents']}, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"load average during the run: {results['load_average']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
