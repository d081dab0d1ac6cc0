"""`t2s-torch`: text2sign on PyTorch (CUDA, MPS or CPU).

Thin on purpose: the verbs parse their options and call library functions.
"""

from __future__ import annotations

from shared.cli import make_group

main = make_group(
    "t2s-torch",
    "text2sign on PyTorch (CUDA, MPS or CPU): "
    "text in, a short sign-language video out.",
)

if __name__ == "__main__":
    main()
