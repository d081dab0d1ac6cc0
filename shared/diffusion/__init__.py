"""Diffusion maths: noise schedules, sampler coefficients (DDPM / DDIM / DPM-Solver++) and the
learning-rate schedule. Imports only `shared.config`."""
