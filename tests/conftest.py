import os

import torch

# Kernels are tested on CPU tensors through the Triton interpreter. It must be set before fla (and so triton.jit)
# is imported; on a machine with a GPU, leave it unset to test compiled kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Two test workers share two cores: one thread each keeps them from fighting.
torch.set_num_threads(max(1, min(torch.get_num_threads(), int(os.environ.get("FLA_TEST_THREADS", "1")))))
