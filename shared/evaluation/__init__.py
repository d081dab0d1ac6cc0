"""Metrics: PSNR / SSIM, pose DTW-MJE, FVD, the toy-signer judge, text following and reference
scoring. Imports the layers below (config, data, model, diffusion)."""
