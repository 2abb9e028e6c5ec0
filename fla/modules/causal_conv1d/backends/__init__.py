"""The peer's kernel backends for the short convolution. Here the device picks the kernel (Triton on a GPU,
interpreted Triton or PyTorch on a CPU); `backends.cuda` names the same function in the peer's call form."""
