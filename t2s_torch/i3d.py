"""Inflated Inception-v1 (I3D, Carreira & Zisserman 2017): the feature network of FVD.

The module tree and parameter names follow the widely used PyTorch port of the Kinetics-400
I3D (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_mean`, ..., `logits.conv3d.bias`),
so its `rgb_imagenet.pt` state dict loads as it is; a `.safetensors` file with the same keys
works too. Nothing is downloaded: the user passes a local file (`eval --i3d PATH`).
`t2s_mlx/i3d.py` is the mirror file; the block table, the checkpoint's checks and the refusal
are shared (`shared.evaluation.i3d_plan`).

`width` scales every channel count; it is read from the checkpoint, so tests can run the full
architecture at a fraction of the cost with a randomly initialised file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.evaluation import i3d_plan
from shared.evaluation.fvd import file_sha256
from shared.evaluation.i3d_plan import MIXED


def _same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TensorFlow's 'SAME' padding (the I3D weights were trained with it), split front/back."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding) -> BatchNorm -> ReLU; the logits unit has a bias and neither."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.is_logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return x if self.is_logits else F.relu(self.bn(x))


class MaxPoolSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # zero padding, as the original port does (inputs of a pool follow a ReLU, so >= 0)
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, c: tuple[int, ...]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a = Unit3D(cin, c[1])
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a = Unit3D(cin, c[3])
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """I3D up to its logits; `features` is the global average of the logits (FVD's features)."""

    def __init__(self, num_classes: int = 400, width: float = 1.0):
        super().__init__()

        def ch(n: int) -> int:
            return i3d_plan.channels(n, width)

        self.Conv3d_1a_7x7 = Unit3D(3, ch(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(ch(64), ch(64))
        self.Conv3d_2c_3x3 = Unit3D(ch(64), ch(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        cin = ch(192)
        for name, chans in MIXED.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
            c = tuple(ch(n) for n in chans)
            setattr(self, name, InceptionBlock(cin, c))
            cin = c[0] + c[2] + c[4] + c[5]
        self.logits = Unit3D(cin, num_classes, logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, num_classes): logits of the pooled clip."""
        for module in self.children():
            if module is self.logits:
                break
            x = module(x)
        x = x.mean(dim=(2, 3, 4), keepdim=True)
        return self.logits(x).flatten(1)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return i3d_plan.state_dict_of(torch.load(path, map_location="cpu", weights_only=True),
                                  torch.Tensor)


class I3DFeatures:
    """A loaded I3D that turns clips into FVD features (shared.evaluation.fvd.FeatureExtractor)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise i3d_plan.missing_file(path)
        try:
            state = _read_state(path)
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            width, num_classes = i3d_plan.checkpoint_dims(shapes)
            model = InceptionI3d(num_classes, width)
            i3d_plan.check_state({k: tuple(v.shape) for k, v in model.state_dict().items()},
                                 shapes)
            model.load_state_dict(state, strict=False)  # the counters may be absent
        except Exception as e:  # noqa: BLE001 - any failure means the same fix
            raise i3d_plan.refusal(path, e) from e
        self.model = model.to(device).eval()
        self.device = device
        self.path = path
        self.sha256 = file_sha256(path)
        self.feature_name = i3d_plan.feature_name(num_classes)

    @torch.no_grad()
    def features(self, clips: np.ndarray) -> np.ndarray:
        """float32 (B, F, S, S, 3) in [-1, 1] -> float64 (B, num_classes)."""
        x = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 4, 1, 2, 3).to(self.device)
        return self.model(x).double().cpu().numpy()


def load_i3d(path: str | Path) -> I3DFeatures:
    """The FVD feature network from a local checkpoint, refused with the fix if it is not one."""
    return I3DFeatures(path)
