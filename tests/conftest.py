import os

# Triton kernels run on CPU only through the interpreter, which must be chosen before any
# @triton.jit function is created; tests never run on a GPU-less machine without it.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
