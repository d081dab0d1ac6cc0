"""The framework-free core (numpy only), in layers: `config` at the bottom; `diffusion`, `data`
and `model` on it; `evaluation` above those; `app` on top. A layer imports only layers below it
(tests/shared/test_layers.py checks), and nothing here imports t2s_torch or t2s_mlx."""
