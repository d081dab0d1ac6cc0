"""Sampler tables and the framework-agnostic step, against diffusers' schedulers.

diffusers is the independent reference: its timestep lists must equal ours exactly, and whole
sampling loops driven by the same random model outputs (and the same noise) must visit the same
states. diffusers computes in float32 and we in float64, hence the magnitude-scaled tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import product

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from shared.config import DiffusionConfig, SampleConfig
from shared.diffusion.sampling import (
    cfg_combine,
    ddim_table,
    ddim_timesteps,
    ddpm_table,
    dpm_timesteps,
    dpmpp_2m_table,
    logsnr_timesteps,
    make_sampler_table,
    sample_loop,
    step,
)
from shared.diffusion.schedules import NoiseSchedule

SHAPE = (2, 3, 2, 4, 4)  # (B, C, F, H, W): a tiny video batch
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
REFERENCE = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler,
             "dpm++sde": DPMSolverMultistepScheduler}
DIFFUSERS_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear",
                      "cosine": "squaredcos_cap_v2"}
BETA_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (8.5e-4, 0.012), "cosine": (1e-4, 0.02)}


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str, scale: float = 1.0) -> None:
    """float64 vs diffusers' float32: relative 1e-4, absolute 1e-4 of the largest value (or of
    `scale`, the size of the intermediates the value was computed from, when that is larger)."""
    scale = max(scale, float(np.abs(ref).max()))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


# ------------------------------------------------------------------------- timesteps


# Every third count, both ends, and counts where float rounding in the trailing arange bites
# (48, 96: rounding ties land differently than with n * step; 61, 103, 121: it overshoots).
STEP_COUNTS = sorted({*range(1, 1001, 3), 2, 3, 48, 50, 61, 96, 103, 121, 500, 501, 999, 1000})


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_timesteps_equal_diffusers_for_every_step_count(sampler, spacing):
    ours_fn = dpm_timesteps if sampler == "dpm++" else ddim_timesteps
    spurious = []
    for offset in (0, 1):
        ref = REFERENCE[sampler](timestep_spacing=spacing, steps_offset=offset)
        for n in STEP_COUNTS:
            ref.set_timesteps(n)
            expected = ref.timesteps.numpy()
            ours = ours_fn(1000, n, spacing, offset)
            if len(expected) == n + 1:
                # diffusers' float arange for "trailing" overshoots for some n (61, 103, ...) and
                # appends t = -1, an invalid timestep; we keep the n valid ones.
                assert spacing == "trailing" and expected[-1] == -1
                spurious.append(n)
                expected = expected[:-1]
            np.testing.assert_array_equal(ours, expected, err_msg=f"{sampler} n={n} off={offset}")
    assert (61 in spurious) == (spacing == "trailing")


# ---------------------------------------------------------------- parity with diffusers


@dataclass(frozen=True)
class Case:
    sampler: str
    steps: int
    prediction_type: str = "epsilon"
    spacing: str = "leading"
    clip: bool = True
    clip_range: float = 1.0
    eta: float = 0.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    schedule: str = "linear"
    zero_snr: bool = False
    variance_type: str = "fixed_small"
    use_clipped_model_output: bool = False
    lower_order_final: bool = True
    final_sigmas_type: str = "zero"

    def __str__(self) -> str:
        defaults = Case(self.sampler, self.steps)
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)[2:]
                   if getattr(self, f.name) != getattr(defaults, f.name)]
        return "-".join([self.sampler, str(self.steps), *changed])

    def configs(self) -> tuple[DiffusionConfig, SampleConfig]:
        start, end = BETA_RANGE[self.schedule]
        diffusion = DiffusionConfig(beta_schedule=self.schedule, beta_start=start, beta_end=end,
                                    rescale_betas_zero_snr=self.zero_snr,
                                    prediction_type=self.prediction_type, clip_sample=self.clip,
                                    clip_sample_range=self.clip_range)
        sample = SampleConfig(sampler=self.sampler, steps=self.steps, eta=self.eta,
                              timestep_spacing=self.spacing, steps_offset=self.steps_offset,
                              set_alpha_to_one=self.set_alpha_to_one,
                              use_clipped_model_output=self.use_clipped_model_output)
        return diffusion, sample

    def table(self):
        diffusion, sample = self.configs()
        if self.sampler.startswith("dpm++"):
            return dpmpp_2m_table(
                NoiseSchedule.from_config(diffusion), self.steps,
                prediction_type=self.prediction_type, timestep_spacing=self.spacing,
                steps_offset=self.steps_offset, clip_range=self.clip_range if self.clip else None,
                lower_order_final=self.lower_order_final, final_sigmas_type=self.final_sigmas_type,
                sde=self.sampler == "dpm++sde")
        return make_sampler_table(diffusion, sample, variance_type=self.variance_type)

    def reference(self):
        start, end = BETA_RANGE[self.schedule]
        common = dict(num_train_timesteps=1000, beta_schedule=DIFFUSERS_SCHEDULE[self.schedule],
                      beta_start=start, beta_end=end, rescale_betas_zero_snr=self.zero_snr,
                      prediction_type=self.prediction_type, timestep_spacing=self.spacing,
                      steps_offset=self.steps_offset)
        if self.sampler == "ddpm":
            return DDPMScheduler(variance_type=self.variance_type, clip_sample=self.clip,
                                 clip_sample_range=self.clip_range, **common)
        if self.sampler == "ddim":
            return DDIMScheduler(clip_sample=self.clip, clip_sample_range=self.clip_range,
                                 set_alpha_to_one=self.set_alpha_to_one, **common)
        # Static clipping to [-1, 1] is diffusers' dynamic thresholding with a ceiling of 1.
        assert not self.clip or self.clip_range == 1.0
        algorithm = "sde-dpmsolver++" if self.sampler == "dpm++sde" else "dpmsolver++"
        return DPMSolverMultistepScheduler(
            solver_order=2, algorithm_type=algorithm, solver_type="midpoint",
            lower_order_final=self.lower_order_final, final_sigmas_type=self.final_sigmas_type,
            thresholding=self.clip, sample_max_value=1.0, **common)


def _rotating_grid(sampler: str, steps: tuple[int, ...]) -> list[Case]:
    """Every spacing meets every prediction type; step counts and clipping rotate through."""
    cases = []
    for k, (spacing, prediction) in enumerate(product(SPACINGS, PREDICTIONS)):
        cases.append(Case(sampler, steps[k % len(steps)], prediction, spacing, clip=k % 2 == 0))
    return cases


DDPM_CASES = _rotating_grid("ddpm", (7, 33, 50)) + [
    Case("ddpm", 50, steps_offset=1),
    Case("ddpm", 33, spacing="trailing", variance_type="fixed_large"),
    Case("ddpm", 50, "v_prediction", clip=False, variance_type="fixed_large"),
    Case("ddpm", 20, "sample", clip_range=2.0),
    Case("ddpm", 1),
    Case("ddpm", 999, spacing="linspace"),
    Case("ddpm", 25, "v_prediction", "trailing", zero_snr=True),
    Case("ddpm", 25, schedule="cosine"),
    Case("ddpm", 25, schedule="scaled_linear", clip=False),
]

DDIM_CASES = [
    Case("ddim", {0.0: 50, 0.5: 33, 1.0: 7}[eta], prediction, spacing,
         clip=spacing != "linspace", eta=eta)
    for spacing, prediction, eta in product(SPACINGS, PREDICTIONS, (0.0, 0.5, 1.0))
] + [
    Case("ddim", 10, set_alpha_to_one=False),
    Case("ddim", 10, spacing="linspace", eta=1.0, set_alpha_to_one=False),
    Case("ddim", 50, steps_offset=1),
    Case("ddim", 999, steps_offset=1),
    Case("ddim", 7, "sample", use_clipped_model_output=True),
    Case("ddim", 33, "v_prediction", "trailing", eta=0.5, use_clipped_model_output=True),
    Case("ddim", 1, eta=1.0),
    Case("ddim", 25, "v_prediction", "trailing", clip=False, zero_snr=True),
    Case("ddim", 25, eta=0.5, schedule="cosine"),
    Case("ddim", 25, clip_range=1.5, schedule="scaled_linear"),
]

DPM_CASES = _rotating_grid("dpm++", (7, 20, 25)) + [
    Case("dpm++", 25, clip=False, steps_offset=1),
    Case("dpm++", 1, spacing="linspace"),
    Case("dpm++", 2, spacing="linspace"),
    Case("dpm++", 3, "v_prediction", "trailing"),
    Case("dpm++", 14, spacing="linspace", final_sigmas_type="sigma_min"),
    Case("dpm++", 15, spacing="linspace", final_sigmas_type="sigma_min"),
    Case("dpm++", 14, spacing="linspace", final_sigmas_type="sigma_min",
         lower_order_final=False),
    Case("dpm++", 999, spacing="trailing", clip=False),
    Case("dpm++", 25, "v_prediction", "trailing", zero_snr=True),
    Case("dpm++", 25, "epsilon", "trailing", zero_snr=True),
    Case("dpm++", 20, spacing="linspace", schedule="cosine"),
    Case("dpm++", 20, spacing="linspace", schedule="scaled_linear", clip=False),
]

SDE_CASES = _rotating_grid("dpm++sde", (7, 10, 20)) + [
    Case("dpm++sde", 1, spacing="linspace"),
    Case("dpm++sde", 14, spacing="linspace", final_sigmas_type="sigma_min"),
    Case("dpm++sde", 15, spacing="linspace", final_sigmas_type="sigma_min", clip=False),
    Case("dpm++sde", 25, "v_prediction", "trailing", zero_snr=True),
    Case("dpm++sde", 20, spacing="linspace", schedule="cosine"),
]


def _run_diffusers(case: Case, x_T, outputs, ddim_noise, seed):
    ref = case.reference()
    ref.set_timesteps(case.steps)
    generator = torch.Generator().manual_seed(seed)
    x, states = torch.from_numpy(x_T), []
    for i, t in enumerate(ref.timesteps):
        m = torch.from_numpy(outputs[i])
        if case.sampler == "ddpm":
            out = ref.step(m, t, x, generator=generator)
        elif case.sampler == "ddim":
            noise = torch.from_numpy(ddim_noise[i]) if case.eta > 0 else None
            out = ref.step(m, t, x, eta=case.eta, variance_noise=noise,
                           use_clipped_model_output=case.use_clipped_model_output)
        elif case.sampler == "dpm++sde":
            out = ref.step(m, t, x, variance_noise=torch.from_numpy(ddim_noise[i]))
        else:
            out = ref.step(m, t, x)
        x = out.prev_sample
        x0 = getattr(out, "pred_original_sample", None)
        states.append((x.double().numpy(), None if x0 is None else x0.double().numpy()))
    return ref.timesteps.numpy(), states


@pytest.mark.parametrize("case", DDPM_CASES + DDIM_CASES + DPM_CASES + SDE_CASES, ids=str)
def test_full_loop_matches_diffusers(case):
    seed = 1234
    table = case.table()
    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal(SHAPE).astype(np.float32)
    outputs = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(case.steps)]
    ddim_noise = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(case.steps)]
    ref_timesteps, ref_states = _run_diffusers(case, x_T, outputs, ddim_noise, seed)
    np.testing.assert_array_equal(table.timesteps, ref_timesteps)

    # Our side replays the same model outputs, and the same noise: DDPM through a torch
    # generator seeded like diffusers', drawn only when the table says a step draws.
    generator = torch.Generator().manual_seed(seed)
    ddim_iter, output_iter, seen_t, states = iter(ddim_noise), iter(outputs), [], []

    def model(x, t):
        seen_t.append(t)
        return next(output_iter).astype(np.float64)

    def noise(shape):
        if case.sampler == "ddpm":
            return torch.randn(shape, generator=generator).double().numpy()
        return next(ddim_iter).astype(np.float64)

    sample_loop(model, table, x_T.astype(np.float64), noise=noise,
                callback=lambda i, t, x, x0: states.append((x, x0)))
    assert seen_t == ref_timesteps.tolist()
    for i, ((x, x0), (ref_x, ref_x0)) in enumerate(zip(states, ref_states, strict=True)):
        assert_close(x, ref_x, f"{case} step {i}: x_prev")
        if ref_x0 is not None:
            # At high t, x0 = (x - sqrt(1 - a) eps) / sqrt(a) magnifies diffusers' float32
            # rounding of x by 1 / sqrt(a) (up to ~160) before clipping hides the magnitude.
            gain = abs(table.x0_from_x[i]) + abs(table.x0_from_model[i])
            assert_close(x0, ref_x0, f"{case} step {i}: x0", scale=0.1 * gain)


# ------------------------------------------------------ diffusers' published golden values
#
# Dummy model and deterministic sample / noise as defined in huggingface/diffusers
# tests/schedulers/test_schedulers.py (SchedulerCommonTest.dummy_model, dummy_sample_deter,
# dummy_noise_deter): model(x, t) = x * t / (t + 1); the sample is arange(4*3*8*8) / 768 laid
# out as (C, H, W, B) and permuted to (B, C, H, W); the noise is the same with the arange flipped.


def _dummy_sample_deter(flip: bool = False) -> np.ndarray:
    n = 4 * 3 * 8 * 8
    values = np.arange(n, dtype=np.float64)
    if flip:
        values = values[::-1]
    return (values.reshape(3, 8, 8, 4) / n).transpose(3, 0, 1, 2)


def _dummy_model(x: np.ndarray, t: int) -> np.ndarray:
    return x * t / (t + 1)


def _abs_sum_mean(x: np.ndarray) -> tuple[float, float]:
    return float(np.abs(x).sum()), float(np.abs(x).mean())


# tests/schedulers/test_scheduler_ddim.py: full_loop() with 10 steps, eta 0, linear betas,
# clip_sample=True; test_full_loop_no_noise / _with_v_prediction / _with_set_alpha_to_one /
# _with_no_set_alpha_to_one. diffusers asserts |sum - s| < 1e-2 and |mean - m| < 1e-3.
@pytest.mark.parametrize(("overrides", "sample_overrides", "result_sum", "result_mean"), [
    ({}, {}, 172.0067, 0.223967),
    ({"prediction_type": "v_prediction"}, {}, 52.5302, 0.0684),
    ({"beta_start": 0.01}, {"set_alpha_to_one": True}, 149.8295, 0.1951),
    ({"beta_start": 0.01}, {"set_alpha_to_one": False}, 149.0784, 0.1941),
])
def test_ddim_golden_full_loop(overrides, sample_overrides, result_sum, result_mean):
    diffusion = DiffusionConfig(clip_sample=True, **overrides)
    # diffusers' DDIMScheduler defaults to "leading" spacing, its goldens with it
    table = make_sampler_table(diffusion, SampleConfig(sampler="ddim", steps=10, eta=0.0,
                                                       timestep_spacing="leading",
                                                       **sample_overrides))
    x = sample_loop(_dummy_model, table, _dummy_sample_deter())
    total, mean = _abs_sum_mean(x)
    assert abs(total - result_sum) < 1e-2
    assert abs(mean - result_mean) < 1e-3


def test_ddim_golden_full_loop_with_noise():
    # test_scheduler_ddim.py test_full_loop_with_noise: noise the sample to timesteps[8] with
    # add_noise, then run the last two of ten steps.
    diffusion = DiffusionConfig(clip_sample=True)
    table = make_sampler_table(diffusion, SampleConfig(sampler="ddim", steps=10,
                                                       timestep_spacing="leading"))
    a, b = NoiseSchedule.from_config(diffusion).q_sample_coefficients(table.timesteps[8])
    x = a * _dummy_sample_deter() + b * _dummy_sample_deter(flip=True)
    for i in (8, 9):
        x, _ = step(table, i, x, _dummy_model(x, int(table.timesteps[i])), clip=np.clip)
    total, mean = _abs_sum_mean(x)
    assert abs(total - 354.5418) < 1e-2
    assert abs(mean - 0.4616) < 1e-3


# tests/schedulers/test_scheduler_ddpm.py test_full_loop_no_noise / _with_v_prediction: all
# 1000 steps with generator torch.manual_seed(0), variance fixed_small, clip_sample=True.
@pytest.mark.parametrize(("prediction_type", "result_sum", "result_mean"), [
    ("epsilon", 258.9606, 0.3372),
    ("v_prediction", 202.0296, 0.2631),
])
def test_ddpm_golden_full_loop(prediction_type, result_sum, result_mean):
    diffusion = DiffusionConfig(prediction_type=prediction_type, clip_sample=True)
    table = make_sampler_table(diffusion, SampleConfig(sampler="ddpm", steps=1000,
                                                       timestep_spacing="leading"))
    generator = torch.Generator().manual_seed(0)
    x = sample_loop(_dummy_model, table, _dummy_sample_deter(),
                    noise=lambda s: torch.randn(s, generator=generator).double().numpy())
    total, mean = _abs_sum_mean(x)
    assert abs(total - result_sum) < 1e-2
    assert abs(mean - result_mean) < 1e-3


# tests/schedulers/test_scheduler_dpm_multi.py test_full_loop_no_noise / _with_v_prediction:
# 10 linspace steps, dpmsolver++ order 2 midpoint, lower_order_final=False,
# final_sigmas_type="sigma_min" (that file's get_scheduler_config); diffusers asserts the mean
# of |x| within 1e-3.
@pytest.mark.parametrize(("prediction_type", "result_mean"), [
    ("epsilon", 0.3301),
    ("v_prediction", 0.2251),
])
def test_dpm_solver_golden_full_loop(prediction_type, result_mean):
    schedule = NoiseSchedule.from_config(DiffusionConfig())
    table = dpmpp_2m_table(schedule, 10, prediction_type=prediction_type,
                           timestep_spacing="linspace", clip_range=None,
                           lower_order_final=False, final_sigmas_type="sigma_min")
    x = sample_loop(_dummy_model, table, _dummy_sample_deter())
    assert abs(_abs_sum_mean(x)[1] - result_mean) < 1e-3


# ------------------------------------------------------------------ maths and contracts


@pytest.fixture(scope="module")
def linear() -> NoiseSchedule:
    return NoiseSchedule.from_config(DiffusionConfig())


def test_ddpm_with_every_timestep_uses_the_schedule_posterior(linear):
    table = ddpm_table(linear, 1000, clip_range=None)
    c_x0, c_xt, variance, _ = linear.posterior(table.timesteps)
    np.testing.assert_allclose(table.prev_from_x0, c_x0, rtol=1e-10)
    np.testing.assert_allclose(table.prev_from_x, c_xt, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(table.noise_std[:-1] ** 2, variance[:-1], rtol=1e-10)
    assert table.timesteps[-1] == 0 and table.noise_std[-1] == 0 and not table.draws_noise[-1]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_with_eta_one_is_ddpm(linear, prediction_type):
    # Song et al. 2021, eq. 16: with sigma_t^2 = the DDPM posterior variance (eta = 1), the DDIM
    # update has the DDPM posterior mean, so both samplers take the same step.
    ddim = ddim_table(linear, 1000, prediction_type=prediction_type, clip_range=None, eta=1.0)
    ddpm = ddpm_table(linear, 1000, prediction_type=prediction_type, clip_range=None)
    rng = np.random.default_rng(5)
    for i in (0, 1, 400, 998, 999):
        x, m, z = rng.standard_normal((3, 6))
        ours, _ = step(ddim, i, x, m, noise=z)
        theirs, _ = step(ddpm, i, x, m, noise=z)
        np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-10)


def test_dpm_solver_last_step_to_sigma_zero_returns_x0(linear):
    table = dpmpp_2m_table(linear, 20)
    rng = np.random.default_rng(6)
    x, m, prev = rng.standard_normal((3, 6))
    x_prev, x0 = step(table, 19, x, m, prev_x0=prev, clip=np.clip)
    np.testing.assert_array_equal(x_prev, x0)
    assert table.is_multistep and table.prev_from_prev_x0[0] == 0.0


def test_step_runs_on_torch_tensors_and_keeps_their_dtype(linear):
    rng = np.random.default_rng(7)
    x, m1, m2, z = rng.standard_normal((4, *SHAPE))
    for table in (dpmpp_2m_table(linear, 10, clip_range=1.0),
                  ddim_table(linear, 10, eta=0.5, prediction_type="v_prediction")):
        np_x, np_prev = step(table, 0, x, m1, clip=np.clip, noise=z)
        np_x, _ = step(table, 1, np_x, m2, clip=np.clip, noise=z, prev_x0=np_prev)
        t = [torch.from_numpy(a.astype(np.float32)) for a in (x, m1, m2, z)]
        t_x, t_prev = step(table, 0, t[0], t[1], clip=torch.clamp, noise=t[3])
        t_x, _ = step(table, 1, t_x, t[2], clip=torch.clamp, noise=t[3], prev_x0=t_prev)
        assert t_x.dtype == torch.float32
        np.testing.assert_allclose(t_x.numpy(), np_x, rtol=1e-5, atol=1e-5)
    single = step(table, 0, x.astype(np.float32), m1.astype(np.float32), clip=np.clip, noise=z)
    assert single[1].dtype == np.float32


def test_cfg_combine_on_a_doubled_batch():
    rng = np.random.default_rng(8)
    cond, uncond = rng.standard_normal((2, 3, 4, 5))
    doubled = np.concatenate([cond, uncond])
    np.testing.assert_allclose(cfg_combine(doubled, 7.5), uncond + 7.5 * (cond - uncond))
    np.testing.assert_allclose(cfg_combine(doubled, 1.0), cond, atol=1e-15)
    np.testing.assert_array_equal(cfg_combine(doubled, 0.0), uncond)
    as_torch = cfg_combine(torch.from_numpy(doubled), 3.0)
    np.testing.assert_allclose(as_torch.numpy(), uncond + 3.0 * (cond - uncond))
    with pytest.raises(ValueError):
        cfg_combine(doubled[:5], 2.0)


@pytest.mark.parametrize(("spacing", "offset", "draws"), [
    ("leading", 0, 6),   # the last step lands on t = 0: diffusers adds no noise there
    ("leading", 1, 7),   # ... but with steps_offset it ends at t = 1 and does
    ("trailing", 0, 7),  # trailing ends at t = 142
])
def test_ddpm_draws_noise_whenever_t_is_positive(linear, spacing, offset, draws):
    table = ddpm_table(linear, 7, timestep_spacing=spacing, steps_offset=offset)
    calls, seen = [], []
    sample_loop(lambda x, t: x * 0.5, table, np.ones(4),
                noise=lambda s: calls.append(s) or np.zeros(s),
                callback=lambda i, t, x, x0: seen.append(t))
    assert len(calls) == draws and calls[0] == (4,)
    assert seen == table.timesteps.tolist()


def test_make_sampler_table_follows_the_config():
    table = make_sampler_table(DiffusionConfig(clip_sample=False, prediction_type="v_prediction"),
                               SampleConfig(sampler="dpm++", steps=20, timestep_spacing="trailing"))
    assert table.sampler == "dpm++" and len(table) == 20 and table.clip_range is None
    assert table.timesteps[0] == 999
    ddim = make_sampler_table(DiffusionConfig(clip_sample_range=2.0),
                              SampleConfig(sampler="ddim", steps=5, eta=0.3))
    assert ddim.clip_range == 2.0 and ddim.draws_noise.all()
    with pytest.raises(ValueError, match="sampler"):
        make_sampler_table(DiffusionConfig(), SampleConfig(sampler="euler"))


def test_auto_spacing_is_logsnr_for_dpm_solver_and_trailing_for_ddim_and_ddpm(linear):
    assert SampleConfig().timestep_spacing == "auto"
    tables = {sampler: make_sampler_table(DiffusionConfig(), SampleConfig(sampler=sampler,
                                                                          steps=20))
              for sampler in ("dpm++", "ddim", "ddpm")}
    np.testing.assert_array_equal(tables["dpm++"].timesteps,
                                  logsnr_timesteps(linear.alphas_cumprod, 20))
    for sampler in ("ddim", "ddpm"):
        np.testing.assert_array_equal(tables[sampler].timesteps,
                                      ddim_timesteps(1000, 20, "trailing"))


@pytest.mark.parametrize(("build", "message"), [
    # At zero terminal SNR an epsilon model says nothing about x0 at t = 999.
    (lambda s: ddim_table(s, 10, timestep_spacing="trailing"), "v_prediction"),
    (lambda s: ddpm_table(s, 10, timestep_spacing="linspace"), "v_prediction"),
])
def test_zero_snr_epsilon_at_the_last_timestep_is_refused(build, message):
    schedule = NoiseSchedule.from_config(DiffusionConfig(rescale_betas_zero_snr=True))
    with pytest.raises(ValueError, match=message):
        build(schedule)


def test_impossible_step_lists_are_refused(linear):
    with pytest.raises(ValueError, match="repeats"):
        dpmpp_2m_table(linear, 1000)  # 1001 linspace points over 0..999 collide
    with pytest.raises(ValueError, match="leave"):
        ddim_table(linear, 1000, steps_offset=1)  # would reach t = 1000
    with pytest.raises(ValueError):
        ddim_table(linear, 0)
    with pytest.raises(ValueError):
        ddpm_table(linear, 10, timestep_spacing="karras")


def test_step_asks_for_what_it_needs(linear):
    x = np.zeros(3)
    with pytest.raises(ValueError, match="noise"):
        step(ddpm_table(linear, 10), 0, x, x, clip=np.clip)
    with pytest.raises(ValueError, match="prev_x0"):
        step(dpmpp_2m_table(linear, 10), 1, x, x)
    with pytest.raises(ValueError, match="clip"):
        step(ddim_table(linear, 10), 0, x, x)


def test_sample_config_chooses_ddim_clipped_model_output():
    """`sample.use_clipped_model_output` reaches DDIM's table."""
    diffusion = DiffusionConfig(clip_sample=True)
    schedule = NoiseSchedule.from_config(diffusion)
    for flag in (False, True):
        table = make_sampler_table(diffusion, SampleConfig(sampler="ddim", steps=10,
                                                           use_clipped_model_output=flag))
        ref = ddim_table(schedule, 10, timestep_spacing="trailing", clip_range=1.0,
                         use_clipped_model_output=flag)
        np.testing.assert_array_equal(table.prev_from_model, ref.prev_from_model)
        np.testing.assert_array_equal(table.prev_from_x, ref.prev_from_x)
    on = make_sampler_table(diffusion, SampleConfig(sampler="ddim", steps=10,
                                                    use_clipped_model_output=True))
    off = make_sampler_table(diffusion, SampleConfig(sampler="ddim", steps=10))
    assert not np.allclose(on.prev_from_model, off.prev_from_model)


# ------------------------------------------------------------------------- logsnr spacing


@pytest.mark.parametrize("num_steps", [1, 2, 10, 20, 25])
def test_logsnr_timesteps_are_the_nearest_to_an_even_log_snr_grid(linear, num_steps):
    ac = linear.alphas_cumprod
    lam = 0.5 * np.log(ac / (1 - ac))
    ts = logsnr_timesteps(ac, num_steps)
    targets = np.linspace(lam[-1], lam[0], num_steps + 1)[:-1]
    assert ts[0] == 999 and len(ts) == num_steps and np.all(np.diff(ts) < 0)
    for t, target in zip(ts, targets):
        neighbours = [u for u in (t - 1, t + 1) if 0 <= u < 1000]
        assert all(abs(lam[t] - target) <= abs(lam[u] - target) for u in neighbours)


@pytest.mark.parametrize("num_steps", [50, 200, 999, 1000])
def test_logsnr_timesteps_stay_distinct_and_valid_for_many_steps(linear, num_steps):
    ts = logsnr_timesteps(linear.alphas_cumprod, num_steps)
    assert len(ts) == num_steps and ts[0] == 999 and ts[-1] >= 0 and np.all(np.diff(ts) < 0)


def test_logsnr_needs_the_schedule_and_survives_zero_terminal_snr():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        dpm_timesteps(1000, 20, "logsnr")
    zero_snr = NoiseSchedule.from_config(DiffusionConfig(rescale_betas_zero_snr=True))
    ts = dpm_timesteps(1000, 20, "logsnr", alphas_cumprod=zero_snr.alphas_cumprod)
    assert ts[0] == 999 and np.all(np.diff(ts) < 0)


def _gaussian_ode_error(schedule: NoiseSchedule, table, std: float) -> float:
    """RMSE to the exact probability-flow solution for N(0, std^2) data, whose noise prediction
    is known in closed form: eps(x, t) = sqrt(1 - a) x / (a std^2 + 1 - a)."""
    ac = schedule.alphas_cumprod
    x_T = np.random.default_rng(0).standard_normal(2000)
    exact = x_T * std / np.sqrt(ac[-1] * std**2 + 1 - ac[-1])
    x, prev = x_T, None
    for i, t in enumerate(table.timesteps):
        a = ac[t]
        x, prev = step(table, i, x, np.sqrt(1 - a) * x / (a * std**2 + 1 - a), prev_x0=prev)
    return float(np.sqrt(np.mean((x - exact) ** 2)))


def test_dpm_solver_on_a_logsnr_grid_solves_the_ode_far_better_for_concentrated_data(linear):
    # Data much narrower than the noise (as image data is, relative to the prior): the solution
    # changes fastest at low noise, where an even log-SNR grid puts its steps. DPM-Solver++ 20
    # then lands closer than DDIM 50 on any grid and than itself on the trailing grid.
    def error(sampler, steps, spacing):
        table = (dpmpp_2m_table if sampler == "dpm++" else ddim_table)(
            linear, steps, timestep_spacing=spacing, clip_range=None)
        return _gaussian_ode_error(linear, table, std=0.1)

    dpm_logsnr = error("dpm++", 20, "logsnr")
    assert dpm_logsnr < error("dpm++", 20, "trailing") / 100
    assert dpm_logsnr < error("ddim", 50, "trailing") / 10
    assert dpm_logsnr < error("ddim", 50, "logsnr") / 10
