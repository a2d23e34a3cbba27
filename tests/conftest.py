import os

import torch

# Triton kernels run on CPU only through the interpreter, which must be chosen before any
# @triton.jit function is created. On a GPU machine the kernels run compiled (set
# TRITON_INTERPRET=1 yourself to test the interpreter there).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
