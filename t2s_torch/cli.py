"""`t2s-torch`: text2sign on PyTorch (CUDA, MPS or CPU).

Thin on purpose: every verb lives in `shared.app.cli` (so the two tools cannot drift apart) and
calls this package's library functions through `t2s_torch.backend.BACKEND` (`.train`,
`.sample`, `.doctor`, ... imported when a verb runs).
"""

from __future__ import annotations

from shared.app.cli import make_group
from t2s_torch.backend import BACKEND
from t2s_torch.tav.cli import finetune_tav_command, sample_tav_command

main = make_group(
    "t2s-torch",
    "text2sign on PyTorch (CUDA, MPS or CPU): "
    "text in, a short sign-language video out.",
    backend=BACKEND,
)
main.add_command(finetune_tav_command)
main.add_command(sample_tav_command)

if __name__ == "__main__":
    main()
