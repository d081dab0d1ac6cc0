"""PyTorch's own speed paths: hand-written autograd nodes the UNet calls, not model files.

They change how a layer is computed (memory kept for the backward pass, which kernel runs),
never its keys, shapes or numbers beyond float rounding, so they have no MLX twin and the mirror
rule (every model file has its twin) does not apply here. `t2s_mlx/kernels/` is MLX's own.

- `norm_silu`: GroupNorm -> per-sample affine -> SiLU (-> conv) as one node that keeps its input
  and statistics only.
- `temporal_conv`: the factorized conv's temporal half with a batched-matmul weight gradient
  (CPU, channels-last).
"""
