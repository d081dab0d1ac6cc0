"""Sampler coefficient tables and one framework-agnostic sampler step.

Every sampler here (DDPM ancestral, DDIM, DPM-Solver++ 2M and its SDE form) is, per step, a
fixed linear combination of a handful of arrays:

    x0     = clip(c.x0_from_x * x + c.x0_from_model * model_output)
    x_prev = c.prev_from_x * x + c.prev_from_model * model_output + c.prev_from_x0 * x0
             + c.prev_from_prev_x0 * prev_x0 + c.noise_std * noise

so the tables below hold those coefficients (float64, computed once in numpy) and `step` applies
them with nothing but `+`, `*` and Python floats. The same `step` therefore runs on numpy arrays,
torch tensors and mlx arrays and keeps their dtype; the one framework op, clipping, is passed in
(`np.clip`, `torch.clamp`, `mx.clip`). Randomness is passed in too, so two backends fed the same
numpy noise follow the same trajectory. The multistep solver's memory (the previous x0
prediction) is returned by `step` and handed back by the caller, so no state lives here.

Reference semantics: diffusers' DDPMScheduler, DDIMScheduler and DPMSolverMultistepScheduler
(algorithm_type="dpmsolver++" or "sde-dpmsolver++", solver_order=2, solver_type="midpoint").
Every sampler starts from
x_T ~ N(0, I) (init_noise_sigma = 1) and takes the model output at `table.timesteps[i]` unscaled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from shared.config import DiffusionConfig, SampleConfig
from shared.diffusion.schedules import NoiseSchedule, eps_coefficients, x0_coefficients

SAMPLERS = ("ddpm", "ddim", "dpm++", "dpm++sde")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "logsnr")
DDPM_VARIANCE_TYPES = ("fixed_small", "fixed_large")

# Any array type with +, -, * against Python floats and basic slicing: np.ndarray,
# torch.Tensor, mx.array.
Array = Any
ClipFn = Callable[[Array, float, float], Array]


# ------------------------------------------------------------------------- timesteps


def _check_steps(num_train_timesteps: int, num_steps: int, spacing: str) -> None:
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing={spacing!r}: use one of {', '.join(TIMESTEP_SPACINGS)}")
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps={num_steps} must be in 1..{num_train_timesteps}")


def _trailing(num_train_timesteps: int, num_steps: int) -> np.ndarray:
    # A float-step arange from T down to 0, rounded, minus one. For some step counts (61, 103,
    # 121, ... with T = 1000) rounding error in the arange yields a spurious extra entry near 0,
    # which diffusers keeps as a final timestep of -1; taking the first num_steps entries drops
    # it and is otherwise identical.
    grid = np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)[:num_steps]
    return np.round(grid).astype(np.int64) - 1


def logsnr_timesteps(alphas_cumprod: np.ndarray, num_steps: int) -> np.ndarray:
    """num_steps distinct descending timesteps, uniform in log-SNR from t = T - 1 towards t = 0.

    num_steps + 1 points evenly spaced in lambda = log(alpha / sigma) from lambda(T - 1) to
    lambda(0), the last dropped (the final step goes to t = 0, resp. sigma = 0), each rounded to
    the timestep of nearest lambda; the model is then evaluated exactly where its noise level is
    known. Even steps in lambda are what DPM-Solver's error analysis asks for (Lu et al. 2022,
    "logSNR" skip type; diffusers' `use_lu_lambdas` is the same grid on fractional sigmas). Where
    rounding would repeat a timestep (many steps, low noise) the grid moves down by one.
    """
    ac = np.array(alphas_cumprod, dtype=np.float64)
    T = len(ac)
    _check_steps(T, num_steps, "logsnr")
    ac[-1] = max(ac[-1], 2.0**-24)  # zero terminal SNR: lambda would be -inf
    lam = 0.5 * np.log(ac / (1.0 - ac))  # increasing as t decreases
    targets = np.linspace(lam[-1], lam[0], num_steps + 1)[:-1]
    ts = np.array([T - 1 - int(np.argmin(np.abs(lam[::-1] - v))) for v in targets])
    for i in range(1, num_steps):  # strictly descending...
        ts[i] = min(ts[i], ts[i - 1] - 1)
    for i in range(num_steps - 1, -1, -1):  # ...and never below the room the tail needs
        ts[i] = max(ts[i], num_steps - 1 - i)
    return ts.astype(np.int64)


def ddim_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading",
                   steps_offset: int = 0, alphas_cumprod: np.ndarray | None = None
                   ) -> np.ndarray:
    """Descending timesteps of DDPMScheduler / DDIMScheduler.set_timesteps.

    `steps_offset` only applies to "leading", as in diffusers. "logsnr" needs the schedule's
    `alphas_cumprod` (`logsnr_timesteps`).
    """
    _check_steps(num_train_timesteps, num_steps, spacing)
    if spacing == "logsnr":
        return logsnr_timesteps(_need_schedule(alphas_cumprod), num_steps)
    if spacing == "linspace":
        grid = np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1]
        return grid.astype(np.int64)
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        return (np.arange(num_steps, dtype=np.int64) * ratio)[::-1] + steps_offset
    return _trailing(num_train_timesteps, num_steps)


def dpm_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "linspace",
                  steps_offset: int = 0, alphas_cumprod: np.ndarray | None = None
                  ) -> np.ndarray:
    """Descending timesteps of DPMSolverMultistepScheduler.set_timesteps.

    Unlike DDIM, "linspace" and "leading" lay num_steps + 1 points from T - 1 (resp. 0) and drop
    the one at 0, because the solver's last step goes to sigma = 0 rather than to t = 0.
    "logsnr" needs the schedule's `alphas_cumprod` (`logsnr_timesteps`).
    """
    _check_steps(num_train_timesteps, num_steps, spacing)
    if spacing == "logsnr":
        return logsnr_timesteps(_need_schedule(alphas_cumprod), num_steps)
    if spacing == "linspace":
        grid = np.linspace(0, num_train_timesteps - 1, num_steps + 1).round()[::-1][:-1]
        return grid.astype(np.int64)
    if spacing == "leading":
        ratio = num_train_timesteps // (num_steps + 1)
        return (np.arange(1, num_steps + 1, dtype=np.int64) * ratio)[::-1] + steps_offset
    return _trailing(num_train_timesteps, num_steps)


def _need_schedule(alphas_cumprod: np.ndarray | None) -> np.ndarray:
    if alphas_cumprod is None:
        raise ValueError('timestep_spacing="logsnr" needs the schedule: pass alphas_cumprod')
    return alphas_cumprod


# ------------------------------------------------------------------------------ tables


class StepCoefficients(NamedTuple):
    """One step's coefficients as Python floats (so frameworks keep their own dtype)."""

    timestep: int
    x0_from_x: float
    x0_from_model: float
    prev_from_x: float
    prev_from_model: float
    prev_from_x0: float
    prev_from_prev_x0: float
    noise_std: float
    draws_noise: bool


_COEFFICIENT_FIELDS = ("x0_from_x", "x0_from_model", "prev_from_x", "prev_from_model",
                       "prev_from_x0", "prev_from_prev_x0", "noise_std")


@dataclass(frozen=True, eq=False)
class SamplerTable:
    """Per-step coefficients of one sampler run, in the order the steps are taken.

    `draws_noise[i]` says whether step i consumes a fresh N(0, I) draw; it follows diffusers
    (DDPM draws whenever t > 0, DDIM whenever eta > 0), so a noise source called exactly then
    replays diffusers' generator stream. `clip_range` is None when x0 is not clipped.
    """

    sampler: str
    timesteps: np.ndarray
    x0_from_x: np.ndarray
    x0_from_model: np.ndarray
    prev_from_x: np.ndarray
    prev_from_model: np.ndarray
    prev_from_x0: np.ndarray
    prev_from_prev_x0: np.ndarray
    noise_std: np.ndarray
    draws_noise: np.ndarray
    clip_range: float | None

    def __post_init__(self) -> None:
        n = len(self.timesteps)
        for name in (*_COEFFICIENT_FIELDS, "draws_noise"):
            value = getattr(self, name)
            if value.shape != (n,):
                raise ValueError(f"{name} has shape {value.shape}, expected ({n},)")
            value.setflags(write=False)
            if name != "draws_noise" and not np.all(np.isfinite(value)):
                bad = self.timesteps[~np.isfinite(value)]
                raise ValueError(
                    f"{self.sampler}: {name} is not finite at timestep(s) {bad.tolist()}; an "
                    "epsilon model cannot recover x0 at zero SNR (rescale_betas_zero_snr): use "
                    "v_prediction, or a spacing that avoids the last timestep")
        self.timesteps.setflags(write=False)

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def is_multistep(self) -> bool:
        """True when some step needs the previous step's x0 prediction."""
        return bool(np.any(self.prev_from_prev_x0 != 0))

    def row(self, i: int) -> StepCoefficients:
        return StepCoefficients(int(self.timesteps[i]),
                                *(float(getattr(self, f)[i]) for f in _COEFFICIENT_FIELDS),
                                bool(self.draws_noise[i]))


def _f64(values: Any) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def _check_timesteps(timesteps: np.ndarray, num_train_timesteps: int) -> None:
    if timesteps.min() < 0 or timesteps.max() >= num_train_timesteps:
        raise ValueError(f"timesteps {timesteps.tolist()} leave [0, {num_train_timesteps}); "
                         "lower steps_offset or the number of steps")


def ddpm_table(schedule: NoiseSchedule, num_steps: int, *, prediction_type: str = "epsilon",
               timestep_spacing: str = "leading", steps_offset: int = 0,
               clip_range: float | None = 1.0,
               variance_type: str = "fixed_small") -> SamplerTable:
    """DDPM ancestral sampling (diffusers DDPMScheduler), also with fewer steps than T.

    Each step jumps to the next listed timestep (t_prev = -1 after the last, where
    alphas_cumprod counts as 1), using the posterior of that jump. "fixed_small" is the posterior
    variance (floored at 1e-20 as diffusers does), "fixed_large" the jump's beta. Noise is added
    whenever t > 0, including at a final step with t > 0 (trailing spacing, steps_offset).
    """
    if variance_type not in DDPM_VARIANCE_TYPES:
        raise ValueError(f"variance_type={variance_type!r}: use one of "
                         f"{', '.join(DDPM_VARIANCE_TYPES)}")
    T = schedule.num_train_timesteps
    ts = ddim_timesteps(T, num_steps, timestep_spacing, steps_offset, schedule.alphas_cumprod)
    _check_timesteps(ts, T)
    ac = schedule.alphas_cumprod
    a_t = ac[ts]
    a_prev = np.concatenate([ac[ts[1:]], [1.0]])
    beta_t = 1.0 - a_t / a_prev
    ax, am = x0_coefficients(a_t, prediction_type)
    if variance_type == "fixed_small":
        variance = np.maximum((1.0 - a_prev) / (1.0 - a_t) * beta_t, 1e-20)
    else:
        variance = beta_t
    draws = ts > 0
    return SamplerTable(
        sampler="ddpm",
        timesteps=ts,
        x0_from_x=_f64(ax),
        x0_from_model=_f64(am),
        prev_from_x=np.sqrt(1.0 - beta_t) * (1.0 - a_prev) / (1.0 - a_t),
        prev_from_model=np.zeros(len(ts)),
        prev_from_x0=np.sqrt(a_prev) * beta_t / (1.0 - a_t),
        prev_from_prev_x0=np.zeros(len(ts)),
        noise_std=np.where(draws, np.sqrt(variance), 0.0),
        draws_noise=draws,
        clip_range=clip_range,
    )


def ddim_table(schedule: NoiseSchedule, num_steps: int, *, prediction_type: str = "epsilon",
               timestep_spacing: str = "leading", steps_offset: int = 0,
               clip_range: float | None = 1.0, eta: float = 0.0, set_alpha_to_one: bool = True,
               use_clipped_model_output: bool = False) -> SamplerTable:
    """DDIM (diffusers DDIMScheduler): eta = 0 deterministic, eta = 1 DDPM-like.

    As in diffusers, each step targets t - T // num_steps whatever the spacing, so with
    "trailing" / "linspace" spacing that target is not always the next listed timestep; below 0
    it uses alphas_cumprod = 1 (set_alpha_to_one) or alphas_cumprod[0]. The direction term uses
    the model's own noise estimate unless use_clipped_model_output re-derives it from the
    clipped x0.
    """
    if eta < 0.0:
        raise ValueError(f"eta={eta} must be >= 0")
    T = schedule.num_train_timesteps
    ts = ddim_timesteps(T, num_steps, timestep_spacing, steps_offset, schedule.alphas_cumprod)
    _check_timesteps(ts, T)
    ac = schedule.alphas_cumprod
    final = 1.0 if set_alpha_to_one else ac[0]
    # diffusers' fixed stride fits its evenly spaced grids; an uneven grid steps to its next entry.
    prev = (np.append(ts[1:], -1) if timestep_spacing == "logsnr"
            else ts - T // num_steps)
    a_t = ac[ts]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
    variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
    std = eta * np.sqrt(variance)
    direction = np.sqrt(np.maximum(1.0 - a_prev - std**2, 0.0))
    ax, am = x0_coefficients(a_t, prediction_type)
    if use_clipped_model_output:
        # eps = (x - sqrt(a_t) * x0) / sqrt(1 - a_t), with x0 after clipping.
        ex, em = 1.0 / np.sqrt(1.0 - a_t), np.zeros(len(ts))
        e0 = -np.sqrt(a_t) / np.sqrt(1.0 - a_t)
    else:
        ex, em = eps_coefficients(a_t, prediction_type)
        e0 = np.zeros(len(ts))
    return SamplerTable(
        sampler="ddim",
        timesteps=ts,
        x0_from_x=_f64(ax),
        x0_from_model=_f64(am),
        prev_from_x=direction * ex,
        prev_from_model=direction * em,
        prev_from_x0=np.sqrt(a_prev) + direction * e0,
        prev_from_prev_x0=np.zeros(len(ts)),
        noise_std=std,
        draws_noise=np.full(len(ts), eta > 0),
        clip_range=clip_range,
    )


def dpmpp_2m_table(schedule: NoiseSchedule, num_steps: int, *, prediction_type: str = "epsilon",
                   timestep_spacing: str = "linspace", steps_offset: int = 0,
                   clip_range: float | None = None, lower_order_final: bool = True,
                   final_sigmas_type: str = "zero", sde: bool = False) -> SamplerTable:
    """DPM-Solver++(2M), midpoint (Lu et al. 2022; diffusers DPMSolverMultistepScheduler).

    In sigma = sqrt((1 - a) / a) and lambda = -log(sigma), step i moves from sigma_i to
    sigma_{i+1} with x0 predictions D0 = x0_i and D1 = (x0_i - x0_{i-1}) / r, r = h_{i-1} / h_i:

        x_{i+1} = (s_{i+1} / s_i) x_i + alpha_{i+1} (1 - e^{-h}) (D0 + D1 / 2)

    The first step, and the last when it goes to sigma = 0 ("zero") or when lower_order_final
    with fewer than 15 steps, is first order (no D1). With "zero" the last step returns the x0
    prediction itself. `clip_range` clips each x0 prediction before it enters the update, which
    equals diffusers' `thresholding=True, sample_max_value=1` when the range is 1.

    `sde`: SDE-DPM-Solver++(2M) (diffusers' "sde-dpmsolver++"): e^{-h} becomes e^{-2h} in the
    x0 gain, x_i is carried by (s_{i+1} / s_i) e^{-h}, and fresh noise of std
    s_{i+1} sqrt(1 - e^{-2h}) is added each step. The injected noise lets later steps correct
    what earlier ones got wrong, where the ODE solver carries every error to the end (on the
    toy model: half the residual frame noise at the same step count, docs/sampling.md).
    """
    if final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(f"final_sigmas_type={final_sigmas_type!r}: use 'zero' or 'sigma_min'")
    T = schedule.num_train_timesteps
    ts = dpm_timesteps(T, num_steps, timestep_spacing, steps_offset, schedule.alphas_cumprod)
    _check_timesteps(ts, T)
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"dpm++ with {num_steps} {timestep_spacing} steps repeats timesteps "
                         f"{ts.tolist()}; a multistep solver needs distinct ones: use fewer steps")
    ac = np.array(schedule.alphas_cumprod)
    if ac[-1] == 0.0:
        # Zero terminal SNR would put sigma at infinity; diffusers nudges it to 2^-24 as well.
        ac[-1] = 2.0**-24
    sigma = np.sqrt((1.0 - ac[ts]) / ac[ts])
    sigma_last = 0.0 if final_sigmas_type == "zero" else np.sqrt((1.0 - ac[0]) / ac[0])
    sigma = np.concatenate([sigma, [sigma_last]])
    alpha_t = 1.0 / np.sqrt(1.0 + sigma**2)
    sigma_t = sigma * alpha_t
    with np.errstate(divide="ignore"):
        lam = -np.log(sigma)  # +inf at sigma = 0

    n = len(ts)
    ax, am = x0_coefficients(alpha_t[:n] ** 2, prediction_type)
    decay = sigma[1:] / sigma[:n]  # e^{-h}, exactly
    # alpha_{i+1} (1 - e^{-h}) for the ODE; alpha_{i+1} (1 - e^{-2h}) for the SDE.
    contraction = decay**2 if sde else decay
    prev_from_x = sigma_t[1:] / sigma_t[:n] * (decay if sde else 1.0)
    gain = alpha_t[1:] * (1.0 - contraction)
    noise_std = sigma_t[1:] * np.sqrt(1.0 - decay**2) if sde else np.zeros(n)
    prev_from_x0 = gain.copy()
    prev_from_prev_x0 = np.zeros(n)
    for i in range(1, n):
        last = i == n - 1
        if last and (final_sigmas_type == "zero" or (lower_order_final and n < 15)):
            continue
        r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
        prev_from_x0[i] = gain[i] * (1.0 + 0.5 / r)
        prev_from_prev_x0[i] = -gain[i] * 0.5 / r
    return SamplerTable(
        sampler="dpm++sde" if sde else "dpm++",
        timesteps=ts,
        x0_from_x=_f64(ax),
        x0_from_model=_f64(am),
        prev_from_x=prev_from_x,
        prev_from_model=np.zeros(n),
        prev_from_x0=prev_from_x0,
        prev_from_prev_x0=prev_from_prev_x0,
        noise_std=noise_std,
        # diffusers draws at every SDE step, the last (to sigma = 0, std 0) included.
        draws_noise=np.full(n, sde),
        clip_range=clip_range,
    )


def resolve_spacing(spacing: str, sampler: str) -> str:
    """`SampleConfig.timestep_spacing` "auto": each sampler's measured best grid, "logsnr" for
    DPM-Solver++ (its error is set by the steps in log-SNR), "trailing" for DDIM and DDPM (on the
    toy model an even log-SNR grid made DDIM 50 slightly worse: 0.027 vs 0.023 RMSE to DDIM 500)."""
    if spacing != "auto":
        return spacing
    return "logsnr" if sampler.startswith("dpm++") else "trailing"


def make_sampler_table(diffusion: DiffusionConfig, sample: SampleConfig, *,
                       variance_type: str = "fixed_small") -> SamplerTable:
    """The table for `sample.sampler` with the run's schedule, prediction type and clipping.

    `sample.eta`, `sample.set_alpha_to_one` and `sample.use_clipped_model_output` only concern
    DDIM; `sample.timestep_spacing` and
    `sample.steps_offset` apply to every sampler.
    """
    schedule = NoiseSchedule.from_config(diffusion)
    clip_range = diffusion.clip_sample_range if diffusion.clip_sample else None
    common = dict(prediction_type=diffusion.prediction_type,
                  timestep_spacing=resolve_spacing(sample.timestep_spacing, sample.sampler),
                  steps_offset=sample.steps_offset, clip_range=clip_range)
    if sample.sampler == "ddpm":
        return ddpm_table(schedule, sample.steps, variance_type=variance_type, **common)
    if sample.sampler == "ddim":
        return ddim_table(schedule, sample.steps, eta=sample.eta,
                          set_alpha_to_one=sample.set_alpha_to_one,
                          use_clipped_model_output=sample.use_clipped_model_output, **common)
    if sample.sampler in ("dpm++", "dpm++sde"):
        return dpmpp_2m_table(schedule, sample.steps, sde=sample.sampler == "dpm++sde", **common)
    raise ValueError(f"sampler={sample.sampler!r}: use one of {', '.join(SAMPLERS)}")


# -------------------------------------------------------------------------------- step


def _combine(terms: list[tuple[float, Array]]) -> Array:
    """sum(c * a) over terms, skipping zero coefficients (they would be wasted work on video)."""
    live = [(c, a) for c, a in terms if c != 0.0]
    if not live:
        return terms[0][1] * 0.0
    total = live[0][1] * live[0][0]
    for c, a in live[1:]:
        total = total + a * c
    return total


def step(table: SamplerTable, i: int, x: Array, model_output: Array, *,
         clip: ClipFn | None = None, noise: Array | None = None,
         prev_x0: Array | None = None) -> tuple[Array, Array]:
    """Take sampler step i from x (at timestep table.timesteps[i]); return (x_prev, x0_pred).

    `clip(a, lo, hi)` is required when the table clips x0. `noise` (standard normal, x's shape)
    is required when `table.draws_noise[i]`. `prev_x0` is the x0_pred returned by step i - 1,
    required by multistep solvers (DPM-Solver++) from the second step on; pass it always.
    """
    c = table.row(i)
    x0 = _combine([(c.x0_from_x, x), (c.x0_from_model, model_output)])
    if table.clip_range is not None:
        if clip is None:
            raise ValueError("this table clips x0 (clip_sample); pass clip=np.clip / torch.clamp "
                             "/ mx.clip")
        x0 = clip(x0, -table.clip_range, table.clip_range)
    terms = [(c.prev_from_x, x), (c.prev_from_model, model_output), (c.prev_from_x0, x0)]
    if c.prev_from_prev_x0 != 0.0:
        if prev_x0 is None:
            raise ValueError(f"step {i} of {table.sampler} needs prev_x0 from the previous step")
        terms.append((c.prev_from_prev_x0, prev_x0))
    if c.draws_noise and noise is None:
        raise ValueError(f"step {i} of {table.sampler} needs noise (draws_noise is set)")
    if c.noise_std != 0.0 and noise is not None:
        terms.append((c.noise_std, noise))
    return _combine(terms), x0


def cfg_combine(model_output: Array, guidance_scale: float) -> Array:
    """Classifier-free guidance on a doubled batch: uncond + g * (cond - uncond).

    `model_output` holds the conditional half first, then the unconditional half, along axis 0
    (the batch was built as concat([cond_inputs, uncond_inputs])). g = 1 gives the conditional
    output; g = 0 the unconditional one.
    """
    n = model_output.shape[0]
    if n % 2:
        raise ValueError(f"guidance needs a doubled batch, got batch size {n}")
    cond, uncond = model_output[: n // 2], model_output[n // 2:]
    return uncond + (cond - uncond) * float(guidance_scale)


def sample_loop(model: Callable[[Array, int], Array], table: SamplerTable, x: Array, *,
                noise: Callable[[tuple[int, ...]], Array] | None = None,
                clip: ClipFn | None = np.clip,
                callback: Callable[[int, int, Array, Array], None] | None = None) -> Array:
    """Run a whole table from x = x_T: the reference loop the backends mirror.

    `model(x, t)` returns the raw prediction for x at integer timestep t. `noise(shape)` is
    called exactly when a step draws noise (so e.g. `lambda s: torch.randn(s, generator=g)`
    replays diffusers' stream). `callback(i, t, x_prev, x0_pred)` sees every step.
    """
    prev_x0 = None
    for i in range(len(table)):
        t = int(table.timesteps[i])
        out = model(x, t)
        eps = None
        if table.draws_noise[i]:
            if noise is None:
                raise ValueError(f"{table.sampler} draws noise; pass noise=callable(shape)")
            eps = noise(tuple(x.shape))
        x, prev_x0 = step(table, i, x, out, clip=clip, noise=eps, prev_x0=prev_x0)
        if callback is not None:
            callback(i, t, x, prev_x0)
    return x


def numpy_noise(seed: int) -> Callable[[tuple[int, ...]], np.ndarray]:
    """The one noise stream both backends sample from: x_T first, then each step's noise.

    Draws float32 standard normals in the channels-last layout (B, F, H, W, C); the torch backend
    permutes them to channels-first, so one checkpoint and one seed give the same video on
    either side.
    """
    rng = np.random.default_rng(seed)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    return draw
