"""One configuration for both backends.

A `Config` is plain dataclasses so that it round-trips through `config.json` in a checkpoint and
builds the same UNet in PyTorch and in MLX. Presets are starting points; `apply_overrides` lets a
command line change any field (`--set train.lr=1e-4`), and `Config.validate` turns a bad
combination into one readable message before any work starts.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


class ConfigError(ValueError):
    """A configuration that cannot work; the message says which field and how to fix it."""


@dataclass
class ModelConfig:
    """The 3D UNet. Spatial and temporal sizes come from the data, not from here."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    # Levels (0 = full resolution) whose blocks carry a spatio-temporal transformer.
    attention_levels: tuple[int, ...] = (2, 3)
    num_heads: int = 4
    norm_groups: int = 32
    # "factorized": spatial 1x3x3 then temporal 3x1x1 ((2+1)D); "full": 3x3x3.
    conv_mode: str = "factorized"
    dropout: float = 0.0
    # Width of the text encoder's token states (384 for all-MiniLM-L6-v2).
    context_dim: int = 384
    # Cross-attention knows when each frame is: every head adds -w * (frame time - token
    # position)^2 to its logits (both in 0..1; a token's position is its rank in the caption),
    # with w learned per head, so "first word, first frames" is a prior the model can sharpen
    # or drop. False is the model of checkpoints from before it (their config lacks the field).
    text_alignment: bool = True
    # Each frame's words, at full resolution: a Linear of the caption's token states pooled per
    # frame with the alignment's weights (softmax of -gain * (frame time - token position)^2,
    # gain at w = 1) is added to conv_in's output, so every block sees which word its frame is
    # in. Starts at zero.
    frame_text: bool = False
    gradient_checkpointing: bool = False

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.base_channels

    def level_channels(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mult]


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    # "linear" | "scaled_linear" | "cosine"
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    rescale_betas_zero_snr: bool = False
    # "epsilon" | "v_prediction" | "sample"
    prediction_type: str = "epsilon"
    # Clip the predicted clean video to [-clip_sample_range, clip_sample_range] while sampling.
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    # Min-SNR loss weighting (Hang et al. 2023); None = plain MSE.
    min_snr_gamma: float | None = None
    # Motion-weighted loss: each position's squared error is weighted by
    # 1 + motion_weight * m / mean(m), m = the clean clip's distance from its own mean over
    # frames (channel-averaged), then renormalised to a mean weight of 1. What moves (hands,
    # arms) outweighs what stays (background, body), which otherwise dominates the loss; 0 = off.
    motion_weight: float = 0.0
    # Apply the motion weighting only at timesteps whose signal-to-noise ratio is at most this:
    # the noisy steps, where the motion is laid out. Less noisy steps, where a frame's detail is
    # drawn, keep the plain loss, so what stays still (body, background) is denoised as well
    # as what moves. None = at every step.
    motion_max_snr: float | None = None


@dataclass
class TextEncoderConfig:
    # A local directory, a Hugging Face name, or the default MiniLM (read offline from its package).
    name: str = DEFAULT_TEXT_ENCODER
    max_length: int = 32


@dataclass
class DataConfig:
    data_dir: str = "data/toy"
    # Optional `filename,text` CSV; otherwise each clip has a same-named .txt caption.
    labels_file: str | None = None
    num_frames: int = 28
    image_size: int = 128
    val_fraction: float = 0.05
    # What stays on one side of the train / validation split: "" = each clip alone; "source" =
    # the source video each clip was cut from (`data prepare`'s manifest); any other name = that
    # column of the labels file or the manifest (e.g. a signer id kept by `data prepare
    # --keep-column`). On real data a held-out score means little if near-copies of its frames
    # (other segments of the same video, the same signer) are in training.
    split_by: str = ""
    seed: int = 0
    # Any bad clip becomes an error instead of a warning.
    strict: bool = False
    # Where decoded clips are cached; None = `<data_dir>/.t2s_cache`.
    cache_dir: str | None = None
    prefetch: int = 4
    # Latent mode: a diffusers AutoencoderKL (local folder or Hugging Face id) whose latents the
    # UNet models instead of pixels; "" = pixel mode. `vae_hash` (its weights' hash) and
    # `vae_downsample` (pixels per latent side) are filled in when training starts, so a
    # checkpoint names the exact VAE its latents belong to.
    vae: str = ""
    vae_hash: str = ""
    vae_downsample: int = 8

    @property
    def model_size(self) -> int:
        """The spatial size the UNet works at: image_size, or its latent size in latent mode."""
        return self.image_size // self.vae_downsample if self.vae else self.image_size


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    steps: int = 10000
    # Clips per forward pass: an int, or "auto": the largest that fits the device's memory,
    # with gradient accumulation making up `effective_batch` clips per optimizer step.
    batch_size: int | str = 8
    grad_accum: int = 1
    effective_batch: int = 16
    lr: float = 1e-4
    warmup_steps: int = 500
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # "no" | "bf16" | "fp16"
    mixed_precision: str = "no"
    cond_drop_prob: float = 0.1
    log_every: int = 10
    # The UNet's graph in TensorBoard's Graphs tab (t2s-torch). Off by default: tracing it costs
    # 5-10 s at the start of every run, tiny ones included, for a picture rarely looked at.
    log_graph: bool = False
    sample_every: int = 1000
    # Real-sign metrics on the validation split every N steps (0 = off; `shared.app.valprobe`):
    # EMA samples of `eval_clips` validation captions, `eval_steps` sampler steps each, scored
    # against their reference clips (PSNR, SSIM, pose DTW-MJE) beside the shuffled-caption
    # baseline, into TensorBoard under val/. Off in every preset: on a 2-core CPU one probe of
    # the `small` preset costs minutes; on a GPU it is seconds (pose is CPU work either way).
    eval_every: int = 0
    eval_clips: int = 4
    eval_steps: int = 25
    # Pose metrics in the probe (needs the `pose` extra; skipped with one note without it).
    eval_pose: bool = True
    checkpoint_every: int = 1000
    # Also checkpoint once this many minutes have passed since the last one (0 = off). A signal
    # saves the step it stopped at, but a crash or an out-of-memory kill does not; with slow
    # steps, `checkpoint_every` alone can be hours of work lost.
    checkpoint_minutes: float = 0.0
    keep_last: int = 3
    seed: int = 0


@dataclass
class SampleConfig:
    # "ddpm" | "ddim" | "dpm++" | "dpm++sde" (DPM-Solver++ 2M with fresh noise each step)
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 5.0
    # "auto" | "leading" | "trailing" | "linspace" | "logsnr". "auto": "logsnr" (even steps in
    # log-SNR, DPM-Solver's own grid) for dpm++, "trailing" for ddim / ddpm. Trailing starts at
    # t = T - 1; with "leading" DPM-Solver++'s grid (diffusers') starts at
    # T * (1 - 1 / (steps + 1)), far below T for many steps. Measured on the demo's toy model
    # (RMSE to DDIM 500, clipped ODE): DPM++ 20 0.038 trailing vs 0.013 logsnr; DDIM 50 0.023
    # trailing vs 0.027 logsnr.
    timestep_spacing: str = "auto"
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    # DDIM with x0 clipping (diffusion.clip_sample): re-derive the noise estimate from the
    # clipped x0 (diffusers' use_clipped_model_output). Then DDIM follows the same clipped ODE
    # as DPM-Solver++, which always works from the clipped x0; off, it keeps the model's own
    # noise estimate, as diffusers does by default.
    use_clipped_model_output: bool = False
    num_samples: int = 1
    seed: int = 0
    fps: int = 10


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; "
                              f"expected {[f.name for f in fields(cls)]}")
        model = data.get("model")
        if isinstance(model, dict) and "text_alignment" not in model:
            data = {**data, "model": {**model, "text_alignment": False}}  # saved before it
        parts = {}
        for f in fields(cls):
            section_cls = _section_types()[f.name]
            parts[f.name] = _build_section(section_cls, data.get(f.name, {}), f.name)
        return cls(**parts)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(data).validate()
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def validate(self) -> Config:
        """Raise ConfigError naming the first field that cannot work; return self otherwise."""
        m, d, data, t, s = self.model, self.diffusion, self.data, self.train, self.sample
        _check(m.num_levels >= 1, "model.channel_mult must have at least one level")
        _check(all(x >= 1 for x in m.channel_mult), "model.channel_mult entries must be >= 1")
        _check(m.base_channels >= 1 and m.num_res_blocks >= 1,
               "model.base_channels and model.num_res_blocks must be >= 1")
        for level in m.attention_levels:
            _check(0 <= level < m.num_levels,
                   f"model.attention_levels has {level}, but levels are 0..{m.num_levels - 1}")
        for ch in m.level_channels():
            _check(ch % m.norm_groups == 0,
                   f"model.norm_groups={m.norm_groups} does not divide {ch} channels "
                   f"(base_channels={m.base_channels} x channel_mult); pick a divisor")
            if m.attention_levels:
                _check(ch % m.num_heads == 0,
                       f"model.num_heads={m.num_heads} does not divide {ch} channels; "
                       "pick a divisor of every attention level's width")
        _check(m.conv_mode in ("factorized", "full"),
               f"model.conv_mode={m.conv_mode!r}: use 'factorized' or 'full'")
        _check(0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)")
        _check(m.in_channels >= 1 and m.out_channels >= 1, "model channels must be >= 1")
        bound = bool(data.vae and data.vae_hash)  # sizes are the VAE's once it was read
        if bound:
            _check(data.vae_downsample >= 1 and data.image_size % data.vae_downsample == 0,
                   f"data.image_size={data.image_size} is not divisible by the VAE's "
                   f"downsampling {data.vae_downsample}; use a multiple of it")
        if data.vae:
            _check(not d.clip_sample,
                   "latent mode (data.vae set) needs diffusion.clip_sample=false: latents are "
                   "not bounded to [-1, 1] (--vae sets it; or --set diffusion.clip_sample=false)")
        factor = 2 ** (m.num_levels - 1)
        if bound:
            _check(data.model_size % factor == 0,
                   f"latent size {data.model_size} (data.image_size={data.image_size} / VAE "
                   f"downsampling {data.vae_downsample}) is not divisible by 2**"
                   f"{m.num_levels - 1}={factor}; use an image_size that is a multiple of "
                   f"{factor * data.vae_downsample}")
        _check(data.image_size % factor == 0,
               f"data.image_size={data.image_size} is not divisible by 2**{m.num_levels - 1}"
               f"={factor} (one halving per extra model level); use a multiple of {factor}")
        _check(data.num_frames >= 1, "data.num_frames must be >= 1")
        _check(0.0 <= data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)")
        _check(d.beta_schedule in ("linear", "scaled_linear", "cosine"),
               f"diffusion.beta_schedule={d.beta_schedule!r}: use linear, scaled_linear or cosine")
        _check(d.prediction_type in ("epsilon", "v_prediction", "sample"),
               f"diffusion.prediction_type={d.prediction_type!r}: "
               "use epsilon, v_prediction or sample")
        _check(0 < d.beta_start < d.beta_end < 1,
               "diffusion.beta_start < diffusion.beta_end must both lie in (0, 1)")
        _check(d.num_train_timesteps >= 2, "diffusion.num_train_timesteps must be >= 2")
        _check(d.min_snr_gamma is None or d.min_snr_gamma > 0,
               "diffusion.min_snr_gamma must be positive (or null to disable)")
        _check(d.motion_weight >= 0, "diffusion.motion_weight must be >= 0 (0 = off)")
        _check(d.motion_max_snr is None or d.motion_max_snr > 0,
               "diffusion.motion_max_snr must be positive (or null: every step)")
        _check(t.batch_size == "auto" or (isinstance(t.batch_size, int) and t.batch_size >= 1),
               f"train.batch_size={t.batch_size!r}: use a positive integer or 'auto'")
        _check(t.grad_accum >= 1, "train.grad_accum must be >= 1")
        _check(t.effective_batch >= 1, "train.effective_batch must be >= 1")
        _check(t.lr > 0, "train.lr must be positive")
        _check(t.mixed_precision in ("no", "bf16", "fp16"),
               f"train.mixed_precision={t.mixed_precision!r}: use no, bf16 or fp16")
        _check(0.0 <= t.ema_decay < 1.0, "train.ema_decay must be in [0, 1)")
        _check(0.0 <= t.cond_drop_prob < 1.0, "train.cond_drop_prob must be in [0, 1)")
        _check(t.eval_every >= 0, "train.eval_every must be >= 0 (0 = off)")
        _check(t.checkpoint_minutes >= 0, "train.checkpoint_minutes must be >= 0 (0 = off)")
        _check(t.eval_clips >= 1 and 1 <= t.eval_steps <= d.num_train_timesteps,
               f"train.eval_clips must be >= 1 and train.eval_steps in "
               f"1..{d.num_train_timesteps}")
        _check(s.sampler in ("ddpm", "ddim", "dpm++", "dpm++sde"),
               f"sample.sampler={s.sampler!r}: use ddpm, ddim, dpm++ or dpm++sde")
        _check(1 <= s.steps <= d.num_train_timesteps,
               f"sample.steps={s.steps} must be in 1..{d.num_train_timesteps}")
        _check(s.timestep_spacing in ("auto", "leading", "trailing", "linspace", "logsnr"),
               f"sample.timestep_spacing={s.timestep_spacing!r}: use auto, leading, trailing, "
               "linspace or logsnr")
        _check(0.0 <= s.eta <= 1.0, "sample.eta must be in [0, 1]")
        _check(self.text.max_length >= 2, "text.max_length must be >= 2")
        return self


PRESETS = ("tiny", "toy", "toy-long", "real", "small", "base")


def preset(name: str) -> Config:
    """`tiny`: tests on a CPU in seconds. `toy`: the README demo on the toy-signer set (about
    ten minutes of training on a 2-core CPU); `toy-long`: the same model trained for under an hour.
    `real`: `demo --data`, a folder of real clips, under 45 minutes of a 2-core CPU.
    `small`: the MacBook default. `base`: a real GPU."""
    if name in ("toy", "toy-long"):
        # A small problem (8 frames of 16 x 16, big gloves, 1-2 word sentences) and the recipe
        # that learns it fastest; each choice measured in docs/text-following.md. Ancestral
        # DDIM 10 (eta 1): half the frame noise of DPM-Solver++ 10, text following as good.
        long = name == "toy-long"
        return Config(
            model=ModelConfig(base_channels=24, channel_mult=(1, 2),
                              num_res_blocks=1, attention_levels=(1,), num_heads=4,
                              norm_groups=8, frame_text=True),
            diffusion=DiffusionConfig(min_snr_gamma=5.0, motion_weight=10.0),
            data=DataConfig(num_frames=8, image_size=16, val_fraction=0.0),
            train=TrainConfig(steps=4500 if long else 2100, batch_size=16 if long else 8,
                              lr=2e-3, warmup_steps=100, ema_decay=0.995, log_every=25,
                              sample_every=0, checkpoint_every=500, keep_last=2),
            sample=SampleConfig(sampler="ddim", steps=10, eta=1.0, guidance=3.0),
        )
    if name == "real":
        # Real clips on a CPU budget (docs/real-clips.md): 8 frames of 32 x 32, where MediaPipe
        # still finds the signer, and a 0.7 M-parameter UNet (at 32 px a step costs as much as
        # the toy's 16 px model four times over). v-prediction: with epsilon, samples came out
        # in wrong, saturated colours, which the first, noisiest steps fix from a tiny error.
        return Config(
            model=ModelConfig(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                              attention_levels=(1, 2), num_heads=4, norm_groups=8,
                              frame_text=True),
            diffusion=DiffusionConfig(prediction_type="v_prediction", min_snr_gamma=5.0),
            data=DataConfig(num_frames=8, image_size=32, val_fraction=0.0),
            train=TrainConfig(steps=2000, batch_size=8, lr=2e-3, warmup_steps=100,
                              ema_decay=0.995, log_every=25, sample_every=0,
                              checkpoint_every=500, keep_last=2, checkpoint_minutes=10.0),
            sample=SampleConfig(sampler="dpm++", steps=20, guidance=3.0),
        )
    if name == "tiny":
        return Config(
            model=ModelConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                              attention_levels=(1,), num_heads=2, norm_groups=8),
            data=DataConfig(num_frames=4, image_size=16),
            train=TrainConfig(steps=20, batch_size=2, warmup_steps=2, log_every=1,
                              sample_every=10, checkpoint_every=10),
            sample=SampleConfig(steps=10),
        )
    if name == "small":
        return Config(
            model=ModelConfig(base_channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
                              attention_levels=(2, 3), num_heads=4, norm_groups=32),
            data=DataConfig(num_frames=28, image_size=128),
            train=TrainConfig(batch_size=4),
        )
    if name == "base":
        return Config(
            model=ModelConfig(base_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                              attention_levels=(1, 2, 3), num_heads=8, norm_groups=32),
            data=DataConfig(num_frames=28, image_size=128),
            train=TrainConfig(batch_size=8, mixed_precision="bf16"),
        )
    raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply `section.field=value` strings; values are JSON when they parse, else strings."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        section_name, _, field_name = key.strip().partition(".")
        sections = {f.name: getattr(config, f.name) for f in fields(config)}
        if section_name not in sections or not field_name:
            raise ConfigError(f"override {item!r}: unknown section {section_name!r}; "
                              f"use one of {', '.join(sections)}")
        section = sections[section_name]
        hints = typing.get_type_hints(type(section))
        if field_name not in hints:
            raise ConfigError(f"override {item!r}: {section_name} has no field {field_name!r}; "
                              f"fields are {', '.join(hints)}")
        value = _parse_value(raw.strip())
        setattr(section, field_name, _coerce(value, hints[field_name], key))
    return config


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    if "," in raw:  # 1,2,4 -> a tuple of numbers, for channel_mult and friends
        try:
            return [json.loads(p) for p in raw.split(",") if p.strip()]
        except json.JSONDecodeError:
            pass
    return raw


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a field's type hint, converting where it is unambiguous."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} fits none of {hint}")
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _section_types() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in fields(Config)}


def _build_section(section_cls: type, data: dict[str, Any], name: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {name!r} must be an object")
    hints = typing.get_type_hints(section_cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {sorted(unknown)}; "
                          f"fields are {', '.join(hints)}")
    values = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in data.items()}
    return section_cls(**values)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)

