"""The C++/CUDA ops of ``csrc/`` (the extension ``args_fast._C``), registered as torch custom ops.

* ``select_commit``: pick one of the k candidates per row (greedy argmax or Gumbel-max on passed
  uniforms, exactly :func:`args_fast.engine.ops.select_candidates`), update ``finished``, copy the winner's
  K/V into the row's next prefix slot in every layer (:func:`args_fast.engine.ops.commit_slots_`) and
  advance ``prefix_end`` (reference: :func:`args_fast.engine.ops.select_commit`): one op, mutations declared, so torch.compile and CUDA-graph capture keep a
  decode step whole. CPU loop, or two CUDA kernels with no host sync.
* ``topk_logits``: top-k (k <= 64) of (B, V) logits, fp32 values and int64 indices sorted descending,
  equal values ordered by lower index, NaN above +inf (reference: :func:`args_fast.engine.ops.topk_logits`).
  CPU heap selection, or a CUDA block radix select. :func:`topk_max_k` is the largest k it takes.

The extension is optional: if it was not built (see setup.py), :func:`available` is False and
:func:`unavailable_reason` says why; calling an op then raises RuntimeError with that reason.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

_REASON = ""
try:
    from .. import _C
except ImportError as exc:  # not built, or built against another torch
    _C = None
    _REASON = f"import args_fast._C failed: {exc}"
    _log = os.path.join(os.path.dirname(os.path.dirname(__file__)), "_C_build_error.txt")   # beside _C
    if os.path.exists(_log):
        with open(_log) as f:
            _REASON += f"; build log says: {f.read().strip()}"
    else:
        _REASON += "; build it with: pip install --no-build-isolation -e ."


def available() -> bool:
    """True when the extension is importable (its CPU ops at least)."""
    return _C is not None


def cuda_available() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return _C is not None and bool(_C.with_cuda)


def unavailable_reason() -> str:
    return _REASON


def topk_max_k() -> int:
    """The largest k :func:`topk_logits` takes (csrc/kernels.h ``kTopkMaxK``); 0 when not built."""
    return int(_C.topk_max_k) if _C is not None else 0


def _require() -> None:
    if _C is None:
        raise RuntimeError(f"the args_fast csrc extension ops are unavailable: {_REASON}")


@torch.library.custom_op("args_fast::select_commit_cpp", mutates_args=("finished", "k_cache", "v_cache", "prefix_end"))
def _select_commit_op(top_logits: Tensor, top_ids: Tensor, rewards: Tensor, uniforms: Tensor | None, w: float,
                      temperature: float, finished: Tensor, eos_ids: Tensor | None, pad_id: int, k_cache: Tensor,
                      v_cache: Tensor, prefix_end: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    _require()
    return _C.select_commit(top_logits, top_ids, rewards, uniforms, w, temperature, finished, eos_ids, pad_id,
                            k_cache, v_cache, prefix_end)


@_select_commit_op.register_fake
def _(top_logits, top_ids, rewards, uniforms, w, temperature, finished, eos_ids, pad_id, k_cache, v_cache,
      prefix_end):
    batch = top_logits.shape[0]
    return (top_ids.new_empty(batch), top_ids.new_empty(batch), top_logits.new_empty(batch, dtype=torch.float32))


@torch.library.custom_op("args_fast::topk_logits", mutates_args=())
def _topk_logits_op(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    _require()
    return _C.topk_logits(logits, k)


@_topk_logits_op.register_fake
def _(logits, k):
    return (logits.new_empty(logits.shape[0], k, dtype=torch.float32),
            logits.new_empty(logits.shape[0], k, dtype=torch.int64))


def select_commit(top_logits: Tensor, top_ids: Tensor, rewards: Tensor, uniforms: Tensor | None, w: float,
                  temperature: float, finished: Tensor, eos_ids: Tensor | None, pad_id: int, k_cache: Tensor,
                  v_cache: Tensor, prefix_end: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One ARGS step's selection and cache commit; returns ``(choice, token, reward)``.

    Shapes: top_logits / top_ids (int64) / rewards / uniforms (B, k), uniforms None = greedy;
    finished (B,) bool and prefix_end (B,) int64 are updated in place; k_cache / v_cache are
    (layers, B, H_kv, S, D) of any float dtype, strided views allowed with a contiguous last dim.
    Row b's candidates sit at slots prefix_end[b] + j; prefix_end[b] + k must be <= S (checked on CPU,
    a device-side trap on CUDA). Rows already finished emit pad_id with a nan reward.
    """
    return torch.ops.args_fast.select_commit_cpp(top_logits, top_ids, rewards, uniforms, float(w),
                                                 float(temperature), finished, eos_ids, int(pad_id), k_cache,
                                                 v_cache, prefix_end)


def topk_logits(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(values fp32 (B, k), indices int64 (B, k))`` of (B, V) logits, descending, ties by lower index."""
    return torch.ops.args_fast.topk_logits(logits, int(k))
