"""`t2s-mlx`: text2sign on MLX (Apple Silicon; the Linux CPU build for correctness).

Thin on purpose: every verb lives in `shared.app.cli` (so the two tools cannot drift apart) and
calls this package's library functions through `t2s_mlx.backend.BACKEND` (`.train`,
`.sample`, `.doctor`, ... imported when a verb runs).
"""

from __future__ import annotations

from shared.app.cli import make_group
from t2s_mlx.backend import BACKEND

main = make_group(
    "t2s-mlx",
    "text2sign on MLX (Apple Silicon; the Linux CPU build for correctness): "
    "text in, a short sign-language video out.",
    backend=BACKEND,
)

if __name__ == "__main__":
    main()
