"""Triton kernels of the compiled engine, one op per module, each beside its torch reference.

Importing this package registers the custom ops ``torch.ops.args_fast.candidate_attention`` and
``torch.ops.args_fast.select_commit`` (opaque to torch.compile, capturable in CUDA graphs). Kernels
run on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before this import.
"""
from .candidate_attention import (candidate_attention, candidate_attention_reference, check_slot_ranges,
                                  default_num_splits)
from .select_commit import select_commit, select_commit_reference

__all__ = ["candidate_attention", "candidate_attention_reference", "check_slot_ranges", "default_num_splits",
           "select_commit", "select_commit_reference"]
