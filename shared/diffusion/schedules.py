"""Noise schedules and training-side diffusion coefficients, in numpy float64.

Both backends train and sample against the same numbers, so every schedule quantity is computed
here once, in float64, and a backend only gathers per-timestep values and multiplies. The
reference semantics are diffusers' DDPMScheduler / DDIMScheduler (which compute in float32); the
functions below reproduce them in float64.

Conventions: `t` is an integer timestep in `[0, T)` (or an array of them); `x_t = a * x0 + b * eps`
with `a = sqrt(alphas_cumprod[t])`, `b = sqrt(1 - alphas_cumprod[t])`; "v" is
`a * eps - b * x0` (Salimans & Ho 2022).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from shared.config import DiffusionConfig

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# --------------------------------------------------------------------------- betas


def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """The DDPM paper's schedule (Ho et al. 2020)."""
    return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Linear in sqrt(beta), as used by latent diffusion / Stable Diffusion."""
    roots = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64)
    return roots**2


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule (diffusers' "squaredcos_cap_v2").

    Betas are discretised from alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2 and capped at
    `max_beta`, because the last step would otherwise have beta = 1 and destroy all signal.
    """

    def alpha_bar(s: np.ndarray) -> np.ndarray:
        return np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2

    steps = np.arange(num_train_timesteps, dtype=np.float64)
    ratio = alpha_bar((steps + 1) / num_train_timesteps) / alpha_bar(steps / num_train_timesteps)
    return np.minimum(1.0 - ratio, max_beta)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(alphas_cumprod) so the last timestep has exactly zero SNR.

    Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1):
    without it the model never sees pure noise in training but starts from pure noise when
    sampling. The first timestep keeps its value.
    """
    root = np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alphas_cumprod = root**2
    alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1.0 - alphas


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    rescale_zero_snr: bool = False,
) -> np.ndarray:
    """Betas for a named schedule; `beta_start` / `beta_end` are ignored by "cosine"."""
    if beta_schedule == "linear":
        betas = linear_betas(num_train_timesteps, beta_start, beta_end)
    elif beta_schedule == "scaled_linear":
        betas = scaled_linear_betas(num_train_timesteps, beta_start, beta_end)
    elif beta_schedule == "cosine":
        betas = cosine_betas(num_train_timesteps)
    else:
        raise ValueError(f"beta_schedule={beta_schedule!r}: use one of {', '.join(BETA_SCHEDULES)}")
    return rescale_zero_terminal_snr(betas) if rescale_zero_snr else betas


# ------------------------------------------------------------ prediction conversions


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r}: "
                         f"use one of {', '.join(PREDICTION_TYPES)}")


def x0_coefficients(alpha_cumprod: np.ndarray | float,
                    prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(c_x, c_m) such that the predicted clean sample is x0 = c_x * x_t + c_m * model_output.

    Where alpha_cumprod is 0 (zero terminal SNR) an epsilon model cannot say anything about x0;
    the coefficients are then infinite and samplers refuse them.
    """
    _check_prediction_type(prediction_type)
    a = np.asarray(alpha_cumprod, dtype=np.float64)
    sqrt_a, sqrt_1ma = np.sqrt(a), np.sqrt(1.0 - a)
    if prediction_type == "epsilon":
        with np.errstate(divide="ignore"):
            return 1.0 / sqrt_a, -sqrt_1ma / sqrt_a
    if prediction_type == "v_prediction":
        return sqrt_a, -sqrt_1ma
    return np.zeros_like(a), np.ones_like(a)


def eps_coefficients(alpha_cumprod: np.ndarray | float,
                     prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(c_x, c_m) such that the implied noise is eps = c_x * x_t + c_m * model_output."""
    _check_prediction_type(prediction_type)
    a = np.asarray(alpha_cumprod, dtype=np.float64)
    sqrt_a, sqrt_1ma = np.sqrt(a), np.sqrt(1.0 - a)
    if prediction_type == "epsilon":
        return np.zeros_like(a), np.ones_like(a)
    if prediction_type == "v_prediction":
        return sqrt_1ma, sqrt_a
    with np.errstate(divide="ignore"):
        return 1.0 / sqrt_1ma, -sqrt_a / sqrt_1ma


# --------------------------------------------------------------------------- schedule


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """All per-timestep numbers of the forward process, as read-only float64 arrays of length T.

    Methods take integer timesteps (a scalar or any array) and return arrays of the same shape,
    which a backend turns into tensors and broadcasts over (B, C, F, H, W) itself.
    """

    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray

    @classmethod
    def from_betas(cls, betas: np.ndarray) -> NoiseSchedule:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2:
            raise ValueError("betas must be a 1-D array with at least two entries")
        if np.any(betas <= 0) or np.any(betas > 1):
            raise ValueError("betas must lie in (0, 1]")
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        return cls(
            betas=_readonly(betas),
            alphas=_readonly(alphas),
            alphas_cumprod=_readonly(alphas_cumprod),
            alphas_cumprod_prev=_readonly(np.concatenate([[1.0], alphas_cumprod[:-1]])),
            sqrt_alphas_cumprod=_readonly(np.sqrt(alphas_cumprod)),
            sqrt_one_minus_alphas_cumprod=_readonly(np.sqrt(1.0 - alphas_cumprod)),
        )

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> NoiseSchedule:
        return cls.from_betas(make_betas(cfg.beta_schedule, cfg.num_train_timesteps,
                                         cfg.beta_start, cfg.beta_end,
                                         cfg.rescale_betas_zero_snr))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def _index(self, t: np.ndarray | int) -> np.ndarray:
        t = np.asarray(t)
        if not np.issubdtype(t.dtype, np.integer):
            raise TypeError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.size and (t.min() < 0 or t.max() >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps})")
        return t

    def q_sample_coefficients(self, t: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) with x_t = a * x0 + b * eps: the forward process in closed form."""
        t = self._index(t)
        return self.sqrt_alphas_cumprod[t], self.sqrt_one_minus_alphas_cumprod[t]

    def target_coefficients(self, t: np.ndarray | int,
                            prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
        """(c_x0, c_eps) with the regression target = c_x0 * x0 + c_eps * eps."""
        _check_prediction_type(prediction_type)
        t = self._index(t)
        ones, zeros = np.ones(t.shape), np.zeros(t.shape)
        if prediction_type == "epsilon":
            return zeros, ones
        if prediction_type == "sample":
            return ones, zeros
        return -self.sqrt_one_minus_alphas_cumprod[t], self.sqrt_alphas_cumprod[t]

    def x0_coefficients(self, t: np.ndarray | int,
                        prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
        """(c_x, c_m) with x0 = c_x * x_t + c_m * model_output, e.g. to preview training outputs."""
        return x0_coefficients(self.alphas_cumprod[self._index(t)], prediction_type)

    def snr(self, t: np.ndarray | int | None = None) -> np.ndarray:
        """alphas_cumprod / (1 - alphas_cumprod) at t, or at every timestep if t is None."""
        a = self.alphas_cumprod if t is None else self.alphas_cumprod[self._index(t)]
        return a / (1.0 - a)

    def min_snr_weights(self, t: np.ndarray | int, gamma: float,
                        prediction_type: str) -> np.ndarray:
        """Min-SNR-gamma loss weights (Hang et al. 2023) for an MSE on the given target.

        The paper's weight on the x0-space loss is min(snr, gamma); dividing by the factor that
        relates each target's MSE to the x0 MSE gives min(snr, g)/snr for epsilon,
        min(snr, g)/(snr + 1) for v and min(snr, g) for sample. At zero SNR the epsilon weight
        is its limit, 1.
        """
        _check_prediction_type(prediction_type)
        if gamma <= 0:
            raise ValueError("min-SNR gamma must be positive")
        snr = self.snr(t)
        clipped = np.minimum(snr, gamma)
        if prediction_type == "epsilon":
            with np.errstate(divide="ignore"):
                return np.minimum(1.0, gamma / snr)
        if prediction_type == "v_prediction":
            return clipped / (snr + 1.0)
        return clipped

    def loss_weights(self, t: np.ndarray | int, prediction_type: str,
                     min_snr_gamma: float | None) -> np.ndarray:
        """Per-sample MSE weights: ones for plain MSE, min-SNR weights when gamma is set."""
        if min_snr_gamma is None:
            _check_prediction_type(prediction_type)
            return np.ones(self._index(t).shape)
        return self.min_snr_weights(t, min_snr_gamma, prediction_type)

    def motion_strengths(self, t: np.ndarray | int, motion_weight: float,
                         max_snr: float | None) -> np.ndarray:
        """Per-sample strength of the motion-weighted loss: `motion_weight` where the SNR is at
        most `max_snr` (every step when None), 0 elsewhere."""
        snr = self.snr(t)
        if max_snr is None:
            return np.full(snr.shape, float(motion_weight))
        return np.where(snr <= max_snr, float(motion_weight), 0.0)

    def posterior(self, t: np.ndarray | int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """q(x_{t-1} | x_t, x0) = N(c_x0 * x0 + c_xt * x_t, variance), for one-step-apart t.

        Returns (c_x0, c_xt, variance, log_variance_clipped). The variance is 0 at t = 0, so its
        log is clipped to the value at t = 1 (as in the DDPM reference code), which keeps it
        finite for learned-variance losses.
        """
        t = self._index(t)
        betas, ac, ac_prev = self.betas, self.alphas_cumprod, self.alphas_cumprod_prev
        variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        log_variance = np.log(np.concatenate([variance[1:2], variance[1:]]))
        c_x0 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        c_xt = (1.0 - ac_prev) * np.sqrt(self.alphas) / (1.0 - ac)
        return c_x0[t], c_xt[t], variance[t], log_variance[t]
