"""`eval GENERATED --reference DIR` through both real console scripts: the same per-clip JSON
from t2s-torch and t2s-mlx, FVD only with --i3d (a small randomly initialised I3D saved to a
file here, read by each tool's own I3D), and a wrong --i3d file refused in one line that says
what to pass."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason='pose metrics need ".[pose]"')
pytest.importorskip("skimage", reason='the person clips need ".[pose]"')

from benchmarks import personclips as pc  # noqa: E402
from shared.data.video import write_video  # noqa: E402

BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=600)


def write_clip(folder: Path, name: str, frames: np.ndarray, caption: str, fps: float) -> None:
    write_video(folder / name, frames, fps).with_suffix(".txt").write_text(caption + "\n")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evalref")
    gen, ref = root / "gen", root / "ref"
    wide = {"height": 180, "width": 320}
    for name, path in (("sway", pc.sway), ("bow", pc.bow)):
        write_clip(ref, f"{name}.mp4", pc.render(pc.uniform(16), path, **wide), name, 25)
        for i in range(2):
            write_clip(gen, f"{name}_{i}.gif", pc.render(pc.delayed(8, 2 * i), path), name, 8)
    return gen, ref


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["t2s-torch", "t2s-mlx"])
def test_both_tools_report_each_clip_against_its_reference(tool, folders, tmp_path):
    if tool == "t2s-mlx":
        pytest.importorskip("mlx.core")
    gen, ref = folders
    out = tmp_path / "scores.json"
    result = run(tool, "eval", str(gen), "--reference", str(ref), "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "DTW-MJE" in result.stdout and "FVD: not computed" in result.stdout
    data = json.loads(out.read_text())
    assert data["protocol"]["num_generated"] == 4 and data["protocol"]["num_captions"] == 2
    assert len(data["clips"]) == 4
    for clip in data["clips"]:
        for key in ("psnr", "ssim", "dtw_mje", "hand_travel_ratio", "duration_ratio"):
            assert isinstance(clip["paired"][key], float), key
            assert isinstance(clip["shuffled"][key], float), key
        assert clip["paired"]["dtw_mje"] < clip["shuffled"]["dtw_mje"]
    assert data["totals"]["dtw_mje"]["paired"] < data["totals"]["dtw_mje"]["shuffled"]
    assert "not computed" in data["fvd"]["note"]


@pytest.fixture(scope="module")
def tiny_i3d(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from t2s_torch.i3d import InceptionI3d

    torch.manual_seed(0)
    model = InceptionI3d(num_classes=8, width=0.125)
    for m in model.modules():  # random, not fresh, batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("i3d") / "tiny_i3d.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("tool", ["t2s-torch", "t2s-mlx"])
def test_fvd_with_a_local_i3d_writes_its_protocol(tool, folders, tiny_i3d, tmp_path):
    if tool == "t2s-mlx":  # its own I3D, reading the same file (no torch needed)
        pytest.importorskip("mlx.core")
    gen, ref = folders
    out = tmp_path / "scores.json"
    result = run(tool, "eval", str(gen), "--reference", str(ref), "--no-pose",
                 "--i3d", str(tiny_i3d), "--json", str(out))
    assert result.returncode == 0, result.stderr
    fvd = json.loads(out.read_text())["fvd"]
    assert fvd["paired"] >= 0 and fvd["shuffled"] >= 0
    assert fvd["protocol"]["model_sha256"] == hashlib.sha256(tiny_i3d.read_bytes()).hexdigest()
    assert fvd["protocol"] | {"model_sha256": None} == {
        "num_generated": 4, "num_reference": 4, "frames": 8, "resolution": 224,
        "model_file": str(tiny_i3d), "model_sha256": None,
        "features": "i3d logits (8), global average pooled"}
    assert "FVD: " in result.stdout and "sha256" in result.stdout


@pytest.mark.slow
def test_a_wrong_i3d_file_is_refused_with_the_fix(folders, tmp_path):
    torch = pytest.importorskip("torch")
    gen, ref = folders
    wrong = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, wrong)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    for path in (wrong, text):
        result = run("t2s-torch", "eval", str(gen), "--reference", str(ref), "--no-pose",
                     "--i3d", str(path))
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"{path}: not an I3D checkpoint" in errors[0]
        assert "Conv3d_1a_7x7.conv3d.weight" in errors[0]


def test_loaded_i3d_matches_the_model_it_was_saved_from(tiny_i3d):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from t2s_torch.i3d import InceptionI3d, load_i3d

    extractor = load_i3d(tiny_i3d)
    clips = np.random.default_rng(0).uniform(-1, 1, (2, 8, 64, 64, 3)).astype(np.float32)
    model = InceptionI3d(8, 0.125)
    model.load_state_dict(load_file(str(tiny_i3d)))
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(clips).permute(0, 4, 1, 2, 3)).numpy()
    np.testing.assert_allclose(extractor.features(clips), expected, rtol=1e-5, atol=1e-6)
    # the real network's names, so a pytorch-i3d state dict loads as it is
    names = InceptionI3d().state_dict()
    assert "Mixed_5c.b3b.bn.running_var" in names and names["logits.conv3d.weight"].shape == (
        400, 1024, 1, 1, 1)
