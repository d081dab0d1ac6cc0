"""text2sign, the application launcher above both backends.

The core (`shared`) never names a backend, and each backend names only itself; what picks one
for the user lives here: `t2s-demo` (`text2sign.demo`) runs the demo on MLX on Apple Silicon and
on PyTorch elsewhere.
"""
