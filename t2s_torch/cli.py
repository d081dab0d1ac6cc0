"""`t2s-torch`: text2sign on PyTorch (CUDA, MPS or CPU).

Thin on purpose: every verb lives in `shared.cli` (so the two tools cannot drift apart) and
calls this package's library functions: `t2s_torch.train`, `.sample`, `.doctor`.
"""

from __future__ import annotations

from shared.cli import make_group

main = make_group(
    "t2s-torch",
    "text2sign on PyTorch (CUDA, MPS or CPU): "
    "text in, a short sign-language video out.",
    backend="t2s_torch",
)

if __name__ == "__main__":
    main()
