"""The I3D of FVD, framework-free: its block table, its checkpoint's shape and the refusal.

Both backends build the same Inflated Inception-v1 from this table (`t2s_torch.i3d`,
`t2s_mlx.i3d`, mirror files) and read the same local checkpoint: the state dict of the widely
used PyTorch port of the Kinetics-400 I3D (pytorch-i3d's `rgb_imagenet.pt`, keys such as
`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_mean`, `logits.conv3d.bias`), as a
`torch.save` file or a `.safetensors` file with the same keys. Whatever goes wrong in reading
one, the user gets one line: `refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.data.clips import DataError

I3D_FIX = ("pass the state dict of a Kinetics I3D (InceptionI3d keys such as "
           "Conv3d_1a_7x7.conv3d.weight, e.g. pytorch-i3d's rgb_imagenet.pt) as .pt or "
           ".safetensors")

# Inception blocks: (name, output channels of b0, b1a, b1b, b2a, b2b, b3b at width 1).
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# torch's BatchNorm counter: in the file, not a parameter of either network's computation.
IGNORED_SUFFIX = "num_batches_tracked"


def channels(n: int, width: float) -> int:
    """A channel count of the width-1 network at `width` (tests run the whole architecture
    narrow, from a randomly initialised file)."""
    return max(1, round(n * width))


def parameter_shapes(num_classes: int = 400, width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint both networks build, torch layout, in module order
    (torch's BatchNorm counters aside): what a converter or a test can write without a
    framework."""
    shapes: dict[str, tuple[int, ...]] = {}

    def unit(name: str, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1)) -> None:
        shapes[f"{name}.conv3d.weight"] = (cout, cin, *kernel)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (cout,)

    ch = [channels(n, width) for n in (64, 192)]
    unit("Conv3d_1a_7x7", 3, ch[0], (7, 7, 7))
    unit("Conv3d_2b_1x1", ch[0], ch[0])
    unit("Conv3d_2c_3x3", ch[0], ch[1], (3, 3, 3))
    cin = ch[1]
    for name, widths in MIXED.items():
        c = [channels(n, width) for n in widths]
        unit(f"{name}.b0", cin, c[0])
        unit(f"{name}.b1a", cin, c[1])
        unit(f"{name}.b1b", c[1], c[2], (3, 3, 3))
        unit(f"{name}.b2a", cin, c[3])
        unit(f"{name}.b2b", c[3], c[4], (3, 3, 3))
        unit(f"{name}.b3b", cin, c[5])
        cin = c[0] + c[2] + c[4] + c[5]
    shapes["logits.conv3d.weight"] = (num_classes, cin, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (num_classes,)
    return shapes


def state_dict_of(obj: Any, tensor_type: type | tuple[type, ...]) -> dict[str, Any]:
    """The state dict in a loaded `torch.save` object: itself or its "state_dict" entry, with
    nn.DataParallel's "module." prefix taken off. ValueError when it is not one."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, tensor_type) for v in obj.values()):
        raise ValueError("not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def checkpoint_dims(shapes: Mapping[str, tuple[int, ...]]) -> tuple[float, int]:
    """(width, num_classes) of the network a state dict's torch-layout shapes were saved from."""
    return (shapes["Conv3d_1a_7x7.conv3d.weight"][0] / 64,
            int(shapes["logits.conv3d.weight"][0]))


def check_state(expected: Mapping[str, tuple[int, ...]],
                found: Mapping[str, tuple[int, ...]]) -> None:
    """ValueError naming the first keys or shapes (torch layout) that differ between the network
    built and the file; torch's BatchNorm counter is neither's business."""
    expected = {k: tuple(v) for k, v in expected.items() if not k.endswith(IGNORED_SUFFIX)}
    found = {k: tuple(v) for k, v in found.items() if not k.endswith(IGNORED_SUFFIX)}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"keys differ (missing {missing[:2]}, unexpected {unexpected[:2]})")
    wrong = [f"{k} {found[k]} for {expected[k]}" for k in expected if found[k] != expected[k]]
    if wrong:
        raise ValueError(f"shapes differ ({', '.join(wrong[:2])})")


def feature_name(num_classes: int) -> str:
    """What FVD's protocol records as the features."""
    return f"i3d logits ({num_classes}), global average pooled"


def missing_file(path: Path) -> DataError:
    return DataError(f"{path}: no such I3D checkpoint; {I3D_FIX}")


def refusal(path: Path, error: BaseException) -> DataError:
    """The one line for a file that did not load as an I3D, whatever the failure was."""
    reason = f"missing key {error}" if isinstance(error, KeyError) else (
        str(error).splitlines()[0] if str(error) else type(error).__name__)
    return DataError(f"{path}: not an I3D checkpoint ({reason[:160]}); {I3D_FIX}")
