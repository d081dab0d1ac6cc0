"""MLX's own speed paths: how the UNet's layers run on Metal, not model files.

They change which kernel computes a layer, never its keys, shapes or numbers beyond float
rounding, so they have no torch twin and the mirror rule (every model file has its twin) does
not apply here. `t2s_torch/kernels/` is PyTorch's own.

- `fast_conv`: `FastConv3d`, an `nn.Conv3d` run as the 2-D convs and matmuls Metal is fast at.
"""
