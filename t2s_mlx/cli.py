"""`t2s-mlx`: text2sign on MLX (Apple Silicon; the Linux CPU build for correctness).

Thin on purpose: every verb lives in `shared.cli` (so the two tools cannot drift apart) and
calls this package's library functions: `t2s_mlx.train`, `.sample`, `.doctor`.
"""

from __future__ import annotations

from shared.cli import make_group

main = make_group(
    "t2s-mlx",
    "text2sign on MLX (Apple Silicon; the Linux CPU build for correctness): "
    "text in, a short sign-language video out.",
    backend="t2s_mlx",
)

if __name__ == "__main__":
    main()
