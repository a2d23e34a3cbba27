"""A static KV cache with candidate slots, usable by Hugging Face models (transformers 5.x).

All layers live in one preallocated tensor per model, ``(layers, B, H_kv, S, D)`` for keys and for
values. The first ``length`` slots hold each row's prefix (left padded, the same length for every row);
a forward of ``n`` tokens writes slots ``[length, length + n)`` and attends over ``[0, length + n)``
under the caller's 4-D mask. ``advance(n)`` keeps those slots (prefill, plain decode);
``commit(choice)`` keeps only one of the ``n`` candidate slots per row (ARGS), in a single
gather/scatter over all layers. Nothing is ever copied per candidate.
"""
from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .ops import commit_slots_


class _SlotLayer(CacheLayerMixin):
    """One layer's view of a :class:`SlotKVCache`; HF attention modules call ``update`` on it."""

    is_sliding = False

    def __init__(self, owner: "SlotKVCache", index: int):
        super().__init__()
        # A weak back-reference: owner -> layers -> owner would be a cycle, and then the whole cache (GBs
        # on a GPU) is freed only by the cyclic GC, not when the last user drops it.
        self.owner, self.index = weakref.proxy(owner), index

    def lazy_initialization(self, key_states, value_states):  # storage belongs to the owner
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        return self.owner._write(self.index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.max_slots


class SlotKVCache(Cache):
    def __init__(self, num_layers: int, batch_size: int, max_slots: int):
        super().__init__(layers=[_SlotLayer(self, i) for i in range(num_layers)])
        self.num_layers, self.max_slots, self.length = num_layers, max_slots, 0
        self.batch = batch_size
        self.keys: torch.Tensor | None = None    # (layers, B, H_kv, S, D), allocated on first write
        self.values: torch.Tensor | None = None

    def _write(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor):
        if self.keys is None:
            b, h, _, d = key_states.shape
            shape = (self.num_layers, b, h, self.max_slots, d)
            self.keys = key_states.new_zeros(shape)
            self.values = value_states.new_zeros(shape[:-1] + (value_states.shape[-1],))
        n = key_states.shape[2]
        end = self.length + n
        if end > self.max_slots:
            raise RuntimeError(f"SlotKVCache overflow: {end} slots needed, {self.max_slots} allocated")
        self.keys[layer, :, :, self.length:end] = key_states
        self.values[layer, :, :, self.length:end] = value_states
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def commit(self, choice: torch.Tensor) -> None:
        """Keep candidate ``choice[b]`` of the slots just written as row b's next prefix slot."""
        end = torch.full((self.batch,), self.length, dtype=torch.long, device=self.keys.device)
        commit_slots_(self.keys, self.values, end, choice.to(self.keys.device))
        self.length += 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.length

    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes
