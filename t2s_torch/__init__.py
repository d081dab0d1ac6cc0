"""text2sign on PyTorch (CUDA, MPS or CPU)."""
