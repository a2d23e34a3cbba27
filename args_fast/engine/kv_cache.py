"""The one static KV cache layout, and its adapter for Hugging Face models (transformers 5.x).

:class:`StaticKVCache` holds every layer of one model in one preallocated tensor each for keys and
values, ``(layers, B, H_kv, S, D)``, plus each row's prefix window ``[prefix_start, prefix_end)`` as
device tensors: left padding sits before ``prefix_start``, and the k candidates of an ARGS step go
to slots ``prefix_end + j``. Keeping the winner is one gather/scatter over all layers
(:func:`args_fast.engine.ops.commit_slots_`); nothing is ever copied per candidate. The static runners
(``args_fast/engine/runners``) and the Triton / csrc ops address it directly.

:class:`HFSlotCache` lets a Hugging Face model write into the same layout through the ``Cache``
protocol: a forward of ``n`` tokens writes slots ``[length, length + n)`` and attends over
``[0, length + n)`` under the caller's 4-D mask. It allocates the ``StaticKVCache`` on the first
write, when the model's K/V shapes are known.
"""
from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .ops import commit_slots_


class StaticKVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, slots: int, head_dim: int, *,
                 dtype: torch.dtype, device, value_dim: int | None = None):
        shape = (n_layers, batch, n_kv_heads, slots, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape[:-1] + (value_dim or head_dim,), dtype=dtype, device=device)
        self.prefix_start = torch.zeros(batch, dtype=torch.long, device=device)
        self.prefix_end = torch.zeros(batch, dtype=torch.long, device=device)
        self.batch_index = torch.arange(batch, device=device)[:, None]

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    @property
    def slots(self) -> int:
        return self.keys.shape[3]

    def commit(self, choice: torch.Tensor) -> None:
        """Keep candidate ``choice[b]`` (slot ``prefix_end[b] + choice[b]``) as row b's next prefix slot."""
        commit_slots_(self.keys, self.values, self.prefix_end, choice)
        self.prefix_end.add_(1)

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


class _HFLayerView(CacheLayerMixin):
    """One layer of an :class:`HFSlotCache`; Hugging Face attention modules call ``update`` on it."""

    is_sliding = False

    def __init__(self, owner: "HFSlotCache", index: int):
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


class HFSlotCache(Cache):
    """``length`` (a host int, the same for every row of a left-padded batch) is where the next
    forward writes; the storage's ``prefix_end`` holds the same value on device for the ops."""

    def __init__(self, num_layers: int, batch_size: int, max_slots: int):
        super().__init__(layers=[_HFLayerView(self, i) for i in range(num_layers)])
        self.num_layers, self.max_slots, self.batch, self.length = num_layers, max_slots, batch_size, 0
        self.storage: StaticKVCache | None = None

    def _write(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor):
        if self.storage is None:
            b, h, _, d = key_states.shape
            self.storage = StaticKVCache(self.num_layers, b, h, self.max_slots, d, dtype=key_states.dtype,
                                         device=key_states.device, value_dim=value_states.shape[-1])
            self.storage.prefix_end.fill_(self.length)
        n = key_states.shape[2]
        end = self.length + n
        if end > self.max_slots:
            raise RuntimeError(f"HFSlotCache overflow: {end} slots needed, {self.max_slots} allocated")
        keys, values = self.storage.keys[layer], self.storage.values[layer]
        keys[:, :, self.length:end] = key_states
        values[:, :, self.length:end] = value_states
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        """Keep the ``n`` slots just written (prefill, a plain decode step)."""
        self.length += n
        if self.storage is not None:
            self.storage.prefix_end.add_(n)

    def commit(self, choice: torch.Tensor) -> None:
        """Keep candidate ``choice[b]`` of the slots just written as row b's next prefix slot."""
        self.storage.commit(choice.to(self.storage.keys.device))
        self.length += 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.length

    def nbytes(self) -> int:
        return 0 if self.storage is None else self.storage.nbytes()
