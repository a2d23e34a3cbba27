"""``args_fast::packed_linear``: a linear layer whose weight oneDNN reordered once, for the compiled CPU step.

Why: a decode step's linears are GEMMs of a few rows (B, or B * k candidates). On CPU ATen runs them
through a plain GEMM; oneDNN on a weight reordered once into its blocked layout is much faster
(measured, 2-core AMD EPYC with AVX512-BF16, torch 2.13: the 210 linears of the default 135M policy at
10 rows, weights streamed from memory: float32 35.7 -> 15.5 ms, bfloat16 12.1 -> 9.2 ms; at 1 row
float32 26.1 -> 15.6 ms). ``torch.compile`` cannot take the reordered (mkldnn-layout) tensors as graph
inputs, and Inductor's freezing packs float32 weights for MKL instead, which gains nothing here; so the
reordered weights live in this module, by key, and the compiled graph calls this op with the key (a
constant of the graph).

Contract (reference: ``F.linear(x, weight, bias)`` with the weight that was packed under ``key``):
``x (..., in) -> (..., out_features)`` in x's dtype. Registered with a fake (meta) implementation, so a
compiled graph keeps the call whole. The op is implemented through a plain ``torch.library.Library``
kernel: its dispatch costs about 2 us a call, against about 11 us through ``torch.library.custom_op``
(a step makes about 120 calls).

:class:`PackedLinear` packs one or several linear layers that read the same input (Q, K and V; gate
and up) into one weight and splits the output back. Held to the reference by tests/test_packed_linear.py.
"""
from __future__ import annotations

import itertools
import weakref

import torch
from torch import nn

_PACKED: dict[int, torch.Tensor] = {}     # key -> the oneDNN-reordered (out, in) weight
_keys = itertools.count()

_lib = torch.library.Library("args_fast", "FRAGMENT")
_lib.define("packed_linear(Tensor x, int out_features, Tensor? bias, int key) -> Tensor")


def _packed_linear_cpu(x, out_features: int, bias, key: int):
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(flat, _PACKED[key], bias, "none", [], "")
    return out.view(*x.shape[:-1], out_features)


_lib.impl("packed_linear", _packed_linear_cpu, "CPU")


@torch.library.register_fake("args_fast::packed_linear", lib=_lib)
def _packed_linear_fake(x, out_features, bias, key):
    return x.new_empty((*x.shape[:-1], out_features))


def unavailable_reason(dtype: torch.dtype) -> str | None:
    """Why weights of ``dtype`` cannot be packed on this machine's CPU, or None when they can."""
    if not torch.backends.mkldnn.is_available():
        return "this torch was built without oneDNN"
    if dtype == torch.float32:
        return None
    if dtype == torch.bfloat16:
        return None if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "oneDNN has no bfloat16 kernels for this CPU"
    if dtype == torch.float16:
        return None if torch.ops.mkldnn._is_mkldnn_fp16_supported() else "oneDNN has no float16 kernels for this CPU"
    return f"oneDNN linear takes float32, bfloat16 or float16, not {dtype}"


def packable(layer) -> bool:
    """An ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's projections, weight (in, out))."""
    return isinstance(layer, nn.Linear) or (type(layer).__name__ == "Conv1D" and hasattr(layer, "nf"))


def _weight_and_bias(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, in) weight and bias of a :func:`packable` layer."""
    if not packable(layer):
        raise TypeError(f"cannot pack a {type(layer).__name__}: nn.Linear or transformers' Conv1D only")
    return (layer.weight if isinstance(layer, nn.Linear) else layer.weight.t()), layer.bias


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:   # an inference tensor has no version counter (and cannot be changed in place)
        return -1


class PackedLinear(nn.Module):
    """``layers`` (reading the same input) as one oneDNN GEMM on a packed copy of their weights. Returns
    the output split per layer (or by ``split``), a single tensor for a single layer without ``split``.
    ``rows`` is the expected number of input rows (oneDNN's layout hint; any number works).
    :meth:`repack_if_changed` re-reads the layers' weights when they changed through their parameters
    (in place: ``copy_``, ``load_state_dict``, an optimizer step; or a replaced tensor). A write through
    ``.data`` bypasses the version counters and is not seen."""

    def __init__(self, layers: list[nn.Module], rows: int, split: list[int] | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)    # registered: their parameters are the engine's to watch
        self.rows = max(1, int(rows))
        self.out_features = sum(_weight_and_bias(layer)[0].shape[0] for layer in layers)
        self.split = list(split) if split is not None else (
            [_weight_and_bias(layer)[0].shape[0] for layer in layers] if len(layers) > 1 else None)
        self.key = next(_keys)
        self.repack()
        weakref.finalize(self, _PACKED.pop, self.key, None)   # the packed copy goes with its module

    def _signature(self) -> tuple:
        """Identity, storage and version counter of the packed layers' parameters."""
        return tuple((id(p), p.data_ptr(), _version(p)) for p in self.layers.parameters())

    def repack_if_changed(self) -> bool:
        """Pack the weights again if they changed since they were packed; True when it did."""
        if self._signature() == self._packed_from:
            return False
        self.repack()
        return True

    def repack(self) -> None:
        self._packed_from = self._signature()
        with torch.no_grad():
            pairs = [_weight_and_bias(layer) for layer in self.layers]
            weight = torch.cat([w for w, _ in pairs]) if len(pairs) > 1 else pairs[0][0].contiguous()
            if all(b is None for _, b in pairs):
                bias = None
            else:
                bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in pairs])
            # a plain tensor attribute (not a registered parameter): the compiled graph reads it as an input
            self.bias = None if bias is None else bias.detach()
            _PACKED[self.key] = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.rows)

    def forward(self, x):
        out = torch.ops.args_fast.packed_linear(x, self.out_features, self.bias, self.key)
        return out if self.split is None else out.split(self.split, dim=-1)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, rows={self.rows}, split={self.split}"
