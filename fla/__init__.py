"""fla: Triton kernels for linear attention and softmax flash attention, with PyTorch fallbacks."""

__version__ = "0.1.0"
