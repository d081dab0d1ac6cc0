"""text2sign on MLX (Apple Silicon; the Linux CPU build for correctness)."""
