"""Inflated Inception-v1 (I3D, Carreira & Zisserman 2017): the feature network of FVD, MLX body.

The twin of `t2s_torch/i3d.py`, class by class and method by method: the same module tree and
parameter names (those of the widely used PyTorch port of the Kinetics-400 I3D,
`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_mean`, ..., `logits.conv3d.bias`), read
from the same local file (`eval --i3d PATH`): pytorch-i3d's `rgb_imagenet.pt` as it is, or a
`.safetensors` file with the same keys. A `.pt` file is read without torch
(`shared.model.torch_file`), so FVD on a Mac needs MLX alone. Nothing is downloaded. The block
table, the checkpoint's checks and the refusal are shared (`shared.evaluation.i3d_plan`).

Only the layouts differ from torch: activations are (B, F, H, W, C) here, conv weights
(O, kF, kH, kW, I) (moved on load by `shared.model.layouts.TORCH_TO_MLX_AXES`, the one
table). Every numerical choice is the torch file's: TensorFlow's 'SAME' zero padding split
front/back, BatchNorm eps 1e-3 with the file's running statistics, max pooling over the zero
padded input (a pool follows a ReLU, so its inputs are >= 0), the logits of the space-time
average of the last block.

`width` scales every channel count; it is read from the checkpoint, so tests can run the full
architecture at a fraction of the cost with a randomly initialised file.

Nothing here imports torch.
"""

from __future__ import annotations

from functools import reduce
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from shared.evaluation import i3d_plan
from shared.evaluation.fvd import file_sha256
from shared.evaluation.i3d_plan import MIXED
from shared.model.layouts import MLX_TO_TORCH_AXES, TORCH_TO_MLX_AXES
from shared.model.torch_file import load_torch_file


def _same_pad(x: mx.array, kernel: tuple[int, ...], stride: tuple[int, ...]) -> mx.array:
    """TensorFlow's 'SAME' padding (the I3D weights were trained with it), split front/back."""
    pads = [(0, 0)]
    for size, k, s in zip(x.shape[1:4], kernel, stride):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads.append((total // 2, total - total // 2))
    return mx.pad(x, pads + [(0, 0)])


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding) -> BatchNorm -> ReLU; the logits unit has a bias and neither."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.is_logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm(cout, eps=1e-3, momentum=0.01)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.is_logits:
            return x
        b, f, h, w, c = x.shape  # MLX's BatchNorm takes at most 4-D: frames join the rows
        return nn.relu(self.bn(x.reshape(b, f * h, w, c)).reshape(b, f, h, w, c))


class MaxPoolSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def __call__(self, x: mx.array) -> mx.array:
        # zero padding, as the original port does (inputs of a pool follow a ReLU, so >= 0);
        # a box's maximum is the maximum over each axis in turn, each a max of strided slices
        x = _same_pad(x, self.kernel, self.stride)
        for axis, k, s in zip((1, 2, 3), self.kernel, self.stride):
            span = (x.shape[axis] - k) // s * s + 1
            index = [slice(None)] * x.ndim
            taps = []
            for j in range(k):
                index[axis] = slice(j, j + span, s)
                taps.append(x[tuple(index)])
            x = reduce(mx.maximum, taps)
        return x


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

    def __call__(self, x: mx.array) -> mx.array:
        return mx.concatenate([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                               self.b3b(self.b3a(x))], axis=-1)


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

    def __call__(self, x: mx.array) -> mx.array:
        """(B, F, H, W, 3) in [-1, 1] -> (B, num_classes): logits of the pooled clip."""
        for module in self.children().values():
            if module is self.logits:
                break
            x = module(x)
        x = x.mean(axis=(1, 2, 3), keepdims=True)
        return self.logits(x).reshape(x.shape[0], -1)


def _read_state(path: Path) -> dict[str, np.ndarray | mx.array]:
    """The file's tensors by name, torch layout, as the torch file reads them (without torch)."""
    if path.suffix == ".safetensors":
        return mx.load(str(path))
    return i3d_plan.state_dict_of(load_torch_file(path), np.ndarray)


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    axes = MLX_TO_TORCH_AXES.get(len(shape))
    return tuple(shape) if axes is None else tuple(shape[a] for a in axes)


class I3DFeatures:
    """A loaded I3D that turns clips into FVD features (shared.evaluation.fvd.FeatureExtractor)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise i3d_plan.missing_file(path)
        try:
            state = _read_state(path)
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            width, num_classes = i3d_plan.checkpoint_dims(shapes)
            model = InceptionI3d(num_classes, width)
            i3d_plan.check_state({k: _torch_shape(v.shape)
                                  for k, v in tree_flatten(model.parameters())}, shapes)
            weights = []
            for key, value in state.items():
                if key.endswith(i3d_plan.IGNORED_SUFFIX):
                    continue
                value = (mx.array(value.astype(np.float32)) if isinstance(value, np.ndarray)
                         else value.astype(mx.float32))  # float64 never reaches a Metal GPU
                axes = TORCH_TO_MLX_AXES.get(value.ndim)
                weights.append((key, value.transpose(axes) if axes else value))
            model.update(tree_unflatten(weights))
        except Exception as e:  # noqa: BLE001 - any failure means the same fix
            raise i3d_plan.refusal(path, e) from e
        model.eval()
        mx.eval(model.parameters())
        self.model = model
        self.path = path
        self.sha256 = file_sha256(path)
        self.feature_name = i3d_plan.feature_name(num_classes)

    def features(self, clips: np.ndarray) -> np.ndarray:
        """float32 (B, F, S, S, 3) in [-1, 1] -> float64 (B, num_classes)."""
        x = mx.array(np.ascontiguousarray(clips, dtype=np.float32))
        return np.array(self.model(x), dtype=np.float64)


def load_i3d(path: str | Path) -> I3DFeatures:
    """The FVD feature network from a local checkpoint, refused with the fix if it is not one."""
    return I3DFeatures(path)
