"""Triton kernels of the static engine, one op per module; each one's torch reference is in
``args_fast.engine.ops`` and its test holds the two together.

Importing this package registers the custom ops ``torch.ops.args_fast.candidate_attention`` and
``torch.ops.args_fast.select_commit`` (opaque to torch.compile, capturable in CUDA graphs). Kernels
run on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before this import.
"""
from .candidate_attention import DTYPES as ATTENTION_DTYPES
from .candidate_attention import candidate_attention, check_slot_ranges, default_num_splits, supports_head_dim
from .select_commit import select_commit

__all__ = ["ATTENTION_DTYPES", "candidate_attention", "check_slot_ranges", "default_num_splits", "select_commit", "supports_head_dim"]
