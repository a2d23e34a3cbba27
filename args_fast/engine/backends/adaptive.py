"""``auto`` on CPU: eager for short requests, the compiled step once compiling pays.

Compiling the static step costs seconds to a minute per graph (one per batch size, cache bucket and
mode; less in a later process, from Inductor's on-disk cache), and saves milliseconds per token. So
each request runs on the eager ``hf`` engine unless

* it generates at least ``min_steps`` tokens, where the compile is paid back within the request: by
  default :data:`COMPILE_MIN_STEPS` for the models' dtype, or ``ARGS_FAST_COMPILE_MIN_STEPS`` for
  every dtype; or
* the compiled graph for its shape is already built in this process (nothing left to pay).

The compiled engine is built, and its self-check run, on the first request that needs it; when either
fails, a warning says why once and every request stays eager.
"""
from __future__ import annotations

import os
import warnings

import torch

# The rule: the request length at which the time saved per token repays a cold compile, rounded up to a
# power of two. Measured on the default 135M models, 2-core AMD EPYC (benchmarks/results/
# bench_cpu_step_cpu.md, bench_compile_cache_cpu.json): the compiled fused step saves 50 ms per token
# over hf in float32 and compiles cold in 69 s (1380 tokens), 21 ms in bfloat16 against 51 s (2430
# tokens). A warm on-disk cache compiles in about 5 s. float16 (no oneDNN float16 kernels on that CPU,
# so its linears are not packed; not measured) takes bfloat16's.
COMPILE_MIN_STEPS = {torch.float32: 2048, torch.bfloat16: 4096, torch.float16: 4096}
NEVER = 2**62


def compile_min_steps(dtype=None) -> int:
    """New tokens from which a request runs the compiled step: the environment's, else the default of
    ``dtype`` (:data:`COMPILE_MIN_STEPS`; never for another dtype)."""
    value = os.environ.get("ARGS_FAST_COMPILE_MIN_STEPS", "").strip()
    if not value:
        return COMPILE_MIN_STEPS.get(dtype, NEVER)
    try:
        steps = int(value)
    except ValueError:
        raise ValueError(f"ARGS_FAST_COMPILE_MIN_STEPS must be an int >= 0, got {value!r}") from None
    if steps < 0:
        raise ValueError(f"ARGS_FAST_COMPILE_MIN_STEPS must be an int >= 0, got {steps}")
    return steps


class AdaptiveEngine:
    """The :class:`~args_fast.engine.backends.base.Engine` contract over an eager engine and a compiled
    one (built on first need by ``build_compiled() -> (engine or None, reason)``); each request runs
    wholly on one of them."""

    def __init__(self, eager, build_compiled, *, min_steps: int | None = None, dtype=None):
        self.eager, self._build_compiled = eager, build_compiled
        self.compiled, self.compiled_unavailable = None, None
        self.min_steps = compile_min_steps(dtype) if min_steps is None else min_steps
        self.current = eager
        for name in ("k", "w", "temperature", "eos_ids", "pad_id"):
            setattr(self, name, getattr(eager, name))

    def __getattr__(self, name):   # nonfinite, chosen_objectives, ops, ...: the engine of this request
        if name in ("eager", "current", "compiled", "compiled_unavailable", "min_steps"):
            raise AttributeError(name)
        return getattr(self.current, name)

    @property
    def note(self) -> str:
        """What the decoder's backend line adds: when this engine compiles."""
        if self.compiled_unavailable is not None:
            return f"; the compiled step is unavailable ({self.compiled_unavailable})"
        if self.min_steps >= NEVER:
            return "; compile=True runs the compiled static step (not by default for this dtype)"
        return (f"; requests of >= {self.min_steps} new tokens run the compiled static step "
                "(compile=True: always, compile=False: never)")

    @property
    def compile_seconds(self) -> dict:
        return getattr(self.compiled, "compile_seconds", {})

    def _want_compiled(self, input_ids, max_new_tokens: int, greedy: bool | None) -> bool:
        if self.compiled_unavailable is not None:
            return False
        if self.compiled is not None and any(
                self.compiled.compiled_for(input_ids.shape[0], input_ids.shape[1], max_new_tokens, g)
                for g in ((True, False) if greedy is None else (greedy,))):
            return True
        return max_new_tokens >= self.min_steps

    def prefill(self, input_ids, attention_mask, max_new_tokens):
        self.current = self.eager
        if self._want_compiled(input_ids, max_new_tokens, None):
            if self.compiled is None:
                self.compiled, reason = self._build_compiled()
                if self.compiled is None:
                    self.compiled_unavailable = reason
                    warnings.warn(f"args_fast: the compiled step is unavailable ({reason}); auto runs the eager "
                                  "engine", RuntimeWarning, stacklevel=3)
            if self.compiled is not None:
                self.current = self.compiled
        self.current.prefill(input_ids, attention_mask, max_new_tokens)

    def step(self, uniforms, last: bool = False):
        return self.current.step(uniforms, last=last)
