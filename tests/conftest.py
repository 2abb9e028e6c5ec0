import os

import torch

# Kernels are tested on CPU tensors through the Triton interpreter (set before fla, and so triton.jit, is imported).
# On a GPU machine, FLA_TEST_DEVICE=cuda runs the tests that build inputs on tests.helpers.device() compiled instead.
if os.environ.get("FLA_TEST_DEVICE", "cpu") != "cuda" or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Two test workers share two cores: one thread each keeps them from fighting.
torch.set_num_threads(max(1, min(torch.get_num_threads(), int(os.environ.get("FLA_TEST_THREADS", "1")))))
