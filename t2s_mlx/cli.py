"""`t2s-mlx`: text2sign on MLX (Apple Silicon; the Linux CPU build for correctness).

Thin on purpose: the verbs parse their options and call library functions.
"""

from __future__ import annotations

from shared.cli import make_group

main = make_group(
    "t2s-mlx",
    "text2sign on MLX (Apple Silicon; the Linux CPU build for correctness): "
    "text in, a short sign-language video out.",
)

if __name__ == "__main__":
    main()
