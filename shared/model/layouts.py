"""Tensor layouts, the parameter shapes a config builds, and the checks against both.

Keys are the same in both backends; only conv weights move axes, by the one table below
(`TORCH_TO_MLX_AXES`, `MLX_TO_TORCH_AXES`): 5-D, torch (O, I, kF, kH, kW) against MLX
(O, kF, kH, kW, I) (the 3D UNet); 4-D, torch (O, I, kH, kW) against MLX (O, kH, kW, I) (the 2D
convs of a latent-mode VAE, read from diffusers' files by the MLX port). The UNet has no 4-D
tensors, so the 4-D entry never touches its checkpoints. `parameter_shapes` walks the
UNet with integers, so a converter can refuse keys or shapes that do not fit the model a config
builds before it writes anything; each check raises one line that names the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from shared.config import ModelConfig
from shared.model.safetensors_io import ConvertError, RawTensor
from shared.model.unet_plan import unet_plan

LAYOUTS = ("torch", "mlx")

# Conv weight permutations between the layouts, by tensor rank (the one layout table).
TORCH_TO_MLX_AXES = {5: (0, 2, 3, 4, 1), 4: (0, 2, 3, 1)}
MLX_TO_TORCH_AXES = {5: (0, 4, 1, 2, 3), 4: (0, 3, 1, 2)}


# ---------------------------------------------------------------------------------------------
# layouts and the shapes a config builds


def axes_table(source: str, target: str) -> dict[int, tuple[int, ...]]:
    """The permutation, by tensor rank, that takes `source` layout to `target` (the one table)."""
    if (source, target) == ("torch", "mlx"):
        return TORCH_TO_MLX_AXES
    if (source, target) == ("mlx", "torch"):
        return MLX_TO_TORCH_AXES
    if source == target and source in LAYOUTS:
        return {}
    raise ValueError(f"no conversion from {source!r} to {target!r}; layouts are {LAYOUTS}")


def relayout(t: RawTensor, table: dict[int, tuple[int, ...]]) -> RawTensor:
    axes = table.get(t.array.ndim)
    if axes is None:
        return t
    return RawTensor(t.dtype, np.asarray(t.array.transpose(axes), order="C"))


def layout_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """A torch-layout shape as `layout` stores it."""
    axes = axes_table("torch", layout).get(len(shape))
    return shape if axes is None else tuple(shape[a] for a in axes)


def parameter_shapes(model: ModelConfig, layout: str = "torch") -> dict[str, tuple[int, ...]]:
    """Every parameter key of the UNet `model` builds, with its shape in `layout`.

    Walks `shared.model.unet_plan`, the blocks both UNets build, with integers only; tests check it
    against both real models, so a layer change this walk misses fails loudly.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out: int, inp: int, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = (out, inp)
        if bias:
            shapes[f"{name}.bias"] = (out,)

    def norm(name: str, ch: int) -> None:
        shapes[f"{name}.weight"] = (ch,)
        shapes[f"{name}.bias"] = (ch,)

    def conv(name: str, out: int, inp: int, kernel: tuple[int, int, int]) -> None:
        shapes[f"{name}.weight"] = (out, inp, *kernel)
        shapes[f"{name}.bias"] = (out,)

    def block_conv(name: str, inp: int, out: int) -> None:
        if model.conv_mode == "full":
            conv(name, out, inp, (3, 3, 3))
        else:
            conv(f"{name}.spatial", out, inp, (1, 3, 3))
            conv(f"{name}.temporal", out, out, (3, 1, 1))

    def resnet(name: str, inp: int, out: int) -> None:
        norm(f"{name}.norm1", inp)
        block_conv(f"{name}.conv1", inp, out)
        linear(f"{name}.time_emb_proj", 2 * out, temb)
        norm(f"{name}.norm2", out)
        block_conv(f"{name}.conv2", out, out)
        if inp != out:
            conv(f"{name}.skip", out, inp, (1, 1, 1))

    def attention(name: str, ch: int, context: int) -> None:
        linear(f"{name}.to_q", ch, ch, bias=False)
        linear(f"{name}.to_k", ch, context, bias=False)
        linear(f"{name}.to_v", ch, context, bias=False)
        linear(f"{name}.to_out", ch, ch)

    def transformer(name: str, ch: int) -> None:
        norm(f"{name}.norm", ch)
        linear(f"{name}.proj_in", ch, ch)
        for i in (1, 2, 3, 4):
            norm(f"{name}.norm{i}", ch)
        attention(f"{name}.attn1", ch, ch)
        attention(f"{name}.attn2", ch, model.context_dim)
        attention(f"{name}.attn_temp", ch, ch)
        linear(f"{name}.ff.linear_1", 4 * ch, ch)
        linear(f"{name}.ff.linear_2", ch, 4 * ch)
        linear(f"{name}.proj_out", ch, ch)
        if model.text_alignment:
            shapes[f"{name}.text_align"] = (model.num_heads,)

    plan, temb = unet_plan(model), model.time_embed_dim
    linear("time_embed.linear_1", temb, model.base_channels)
    linear("time_embed.linear_2", temb, temb)
    linear("text_embed", temb, model.context_dim)
    if model.frame_text:
        linear("frame_text.proj", plan.in_channels, model.context_dim)
    conv("conv_in", plan.in_channels, model.in_channels, (1, 3, 3))

    for block in plan.blocks:
        ch = block.out_channels
        for j, (inp, out) in enumerate(block.resnets):
            resnet(f"{block.name}.resnets.{j}", inp, out)
            if j < block.transformers:  # after its resnet; the mid block's sits between two
                transformer(f"{block.name}.attentions.{j}", ch)
        if block.resample:
            conv(f"{block.name}.{block.kind}sample.conv", ch, ch, (1, 3, 3))

    norm("norm_out", plan.out_channels)
    conv("conv_out", model.out_channels, plan.out_channels, (1, 3, 3))
    return {k: layout_shape(v, layout) for k, v in shapes.items()}


# ---------------------------------------------------------------------------------------------
# checks (each raises one line that names the fix)


def _examples(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def check_file_layout(metadata: dict[str, str], source: str, target: str, path: Path) -> None:
    """Refuse a file that is not in the layout this direction converts from."""
    layout = metadata.get("t2s_layout")
    if layout == source:
        return
    if layout is None:
        raise ConvertError(f"{path}: no t2s_layout in its safetensors metadata, so not a "
                           "text2sign checkpoint file; re-save it with t2s_torch or t2s_mlx "
                           "save_checkpoint")
    if layout == target:
        raise ConvertError(f"{path}: already in {target} layout; to go {target} -> {source} use "
                           f"`python convert/{target}_to_{source}.py IN OUT`, or use it as it is")
    raise ConvertError(f"{path}: unknown t2s_layout {layout!r}; expected {source!r} for "
                       f"convert/{source}_to_{target}.py")


def key_refusal(path: Path, missing: Iterable[str], unexpected: Iterable[str], what: str,
                config_path: Path | str) -> ConvertError:
    missing, unexpected = set(missing), set(unexpected)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    return ConvertError(f"{path}: {what} do not fit the model {config_path} builds: "
                        f"{'; '.join(parts)}; convert the checkpoint with the config.json it was "
                        "written with, or re-save it from the training run")


def check_keys(expected: Iterable[str], found: Iterable[str], path: Path, what: str,
               config_path: Path | str) -> None:
    expected, found = set(expected), set(found)
    if expected != found:
        raise key_refusal(path, expected - found, found - expected, what, config_path)


def check_shape(key: str, shape: tuple[int, ...], want: tuple[int, ...], layout: str,
                path: Path, config_path: Path | str) -> None:
    """`want` is what the config builds, in `layout` (the layout the file says it is in)."""
    if shape == want:
        return
    other = "mlx" if layout == "torch" else "torch"
    axes = axes_table(layout, other).get(len(want))
    if axes is not None and shape == tuple(want[a] for a in axes):
        hint = (f"it is stored in {other} layout although its t2s_layout says {layout}; "
                "re-save it from its backend")
    else:
        hint = "convert the checkpoint with the config.json it was written with"
    raise ConvertError(f"{path}: {key} has shape {list(shape)} but {config_path} builds "
                       f"{list(want)} in {layout} layout; {hint}")
