"""The static engine: static runners, static KV caches, one CUDA graph per decode step.

One ARGS step, every shape static (B rows, k candidates):

    ``ops.topk`` of the policy logits -> reward runner ``decode`` of the k candidates (k query tokens per
    row at the same position, K/V into the k slots after the prefix, ``ops.attention``) -> score head
    -> ``ops.select_commit`` (choose, emit, mark EOS, commit the winner's K/V in the reward cache,
    advance its prefix) -> policy ``decode`` of the chosen token (writes its K/V, next logits).

The three per-step ops come from an :class:`OpsTable`; the backends ``static``, ``static-triton``,
``static-csrc`` and ``static-compiled`` are this one engine with different tables (:data:`OPS_TABLES`),
each op holding the contract of its torch reference in ``args_fast.engine.ops``.

``static-compiled``: the whole step (top-k without host reads, the candidates' decode, the heads,
select + commit, the policy's decode of the winner) is one ``torch.compile`` graph (Inductor; on CPU its
C++ backend). Shapes are static: one graph per (batch, cache slots, greedy or stochastic), so caches
are allocated in buckets (:func:`bucket_slots`) and prompts of other lengths in the same bucket reuse
the compiled code. The first call of each graph compiles it (seconds to a minute): ``compile_seconds``
records it. Each engine compiles its own copy of the step's code, so its graphs are its own: found by
its own guards and dropped with it. On CPU the runners' linear layers run on weights oneDNN reordered
once (:mod:`args_fast.engine.packed_linear`; Q/K/V and gate/up as one GEMM each), where oneDNN takes the
dtype: the engine holds one packed copy of the weights, and a change of the weights (through the
parameters: ``copy_``, ``load_state_dict``, an optimizer step, a replaced tensor) is seen at the next
request, which packs them again. A write through ``.data`` bypasses the version counters and is not
seen. Inductor's on-disk cache makes a later process's first call cheaper. On CUDA, with both models on one device, the
whole step is captured once as a CUDA graph (per cache allocation and mode) and replayed; the prefix
windows are device tensors, so the graph is valid at every length. On CPU, or with the models on
different devices, the step runs eagerly (``select_commit`` touches the policy's logits and the
reward model's cache in one op, so the graph path needs one device).

Cache memory: the policy holds (layers, B, H_kv, P + T, D); the reward model holds each row's
prefix once plus k candidate slots, (layers, B, H_kv, P + T + k, D).

Fused step (a :class:`~args_fast.rewards.head.RewardHead` on the policy's own backbone, no reward
runner): the policy itself decodes the k candidates over its cache of ``P + T + k`` slots; the head
on their hidden states gives the rewards, ``select_commit`` keeps the winner's K/V in the policy
cache, and the LM head on the winner's hidden state gives the next logits. One forward per token.
"""
from __future__ import annotations

import os
import time
import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .. import compiled_ops
from .. import ops as torch_ops
from ..packed_linear import PackedLinear, unavailable_reason
from ..runners.packing import pack_linears, repack_changed


class BackendUnavailable(Exception):
    """A backend cannot run these models here; the message says why."""


def sdpa_candidate_attention(q, k_cache, v_cache, prefix_start, prefix_end, scale=None):
    """``ops.candidate_attention`` through torch SDPA with the (B, 1, k, S) visibility mask over the
    whole cache (static shapes; reads every slot, so it costs the full cache length every step)."""
    visible = torch_ops.candidate_visibility(prefix_start, prefix_end, q.shape[2], k_cache.shape[2])
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible[:, None], scale=scale,
                                          enable_gqa=k_cache.shape[1] != q.shape[1])


@dataclass(frozen=True)
class OpsTable:
    """The per-step ops one static backend plugs into the engine; each has the contract (and the
    test against) its torch reference in ``args_fast.engine.ops``."""
    name: str
    attention: Callable      # ops.candidate_attention
    topk: Callable           # ops.topk_logits
    select_commit: Callable  # ops.select_commit
    description: str = ""


def _triton_kernels(device: torch.device, head_dims: list[int], dtype: torch.dtype):
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailable("the models are not on CUDA, and TRITON_INTERPRET=1 (Triton's CPU interpreter, "
                                 "set before Triton is imported) is not set")
    try:
        from .. import kernels
    except ImportError as exc:
        raise BackendUnavailable(f"Triton kernels unavailable: {type(exc).__name__}: {exc}") from exc
    bad = [d for d in head_dims if not kernels.supports_head_dim(d)]
    if bad:
        raise BackendUnavailable(f"the Triton candidate attention needs a power-of-two head dim in [16, 256], "
                                 f"got {bad[0]}")
    if dtype not in kernels.ATTENTION_DTYPES:
        raise BackendUnavailable(f"the Triton candidate attention takes {kernels.ATTENTION_DTYPES}, "
                                 f"the models are {dtype}")
    return kernels


def _static_ops(device, head_dims, dtype, k) -> OpsTable:
    cuda = device.type == "cuda"
    attention = sdpa_candidate_attention if cuda else torch_ops.candidate_attention
    return OpsTable("static", attention, torch_ops.topk_logits, torch_ops.select_commit,
                    f"torch ops: {'SDPA' if cuda else 'the float32 reference'} candidate attention, top-k, select + commit"
                    f"{', one CUDA graph per step' if cuda else ''}")


def _triton_ops(device, head_dims, dtype, k) -> OpsTable:
    kernels = _triton_kernels(device, head_dims, dtype)
    how = "compiled" if device.type == "cuda" else "interpreted (TRITON_INTERPRET=1)"
    return OpsTable("static-triton", kernels.candidate_attention, torch_ops.topk_logits, kernels.select_commit,
                    f"Triton candidate attention and select + commit, {how}; torch top-k")


def _csrc_ops(device, head_dims, dtype, k) -> OpsTable:
    from .. import csrc_ops
    if not csrc_ops.available():
        raise BackendUnavailable(csrc_ops.unavailable_reason())
    if device.type == "cuda" and not csrc_ops.cuda_available():
        raise BackendUnavailable("args_fast._C was built without its CUDA kernels (the models are on CUDA)")
    if device.type not in ("cuda", "cpu"):
        raise BackendUnavailable(f"the csrc ops run on CPU and CUDA, the models are on {device}")
    try:   # csrc has no attention kernel: Triton's where it runs, else the torch op
        attention, how = _triton_kernels(device, head_dims, dtype).candidate_attention, "Triton attention"
    except BackendUnavailable:
        attention = sdpa_candidate_attention if device.type == "cuda" else torch_ops.candidate_attention
        how = "torch attention"
    # the csrc radix top-k takes k <= topk_max_k(); k is fixed per engine, so this is decided once
    topk = csrc_ops.topk_logits if k <= csrc_ops.topk_max_k() else torch_ops.topk_logits
    where = "CUDA" if device.type == "cuda" else "CPU"
    return OpsTable("static-csrc", attention, topk, csrc_ops.select_commit,
                    f"csrc {where} select + commit and top-k (k <= {csrc_ops.topk_max_k()}) + {how}")


def _packs(device, dtype) -> bool:
    """Whether the compiled step runs its linears on oneDNN-packed weights: on CPU, where oneDNN takes
    the dtype (:func:`args_fast.engine.packed_linear.unavailable_reason`)."""
    return device.type == "cpu" and unavailable_reason(dtype) is None


def _compiled_ops(device, head_dims, dtype, k) -> OpsTable:
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"the compiled step runs on CPU and CUDA, the models are on {device}")
    # one graph per step: the exact top-k with no host read; attention over the static cache, the mask
    # keeping each candidate to its prefix and own slot: float32 on CPU the grouped matmuls, else SDPA
    # (see compiled_ops; on CUDA its kernels suit the GPU, not measured there yet); the select + commit
    # with in-place cache writes
    cpu = device.type == "cpu"
    grouped = cpu and dtype == torch.float32
    attention = compiled_ops.grouped_candidate_attention if grouped else sdpa_candidate_attention
    return OpsTable("static-compiled", attention, torch_ops.topk_logits_sync_free, compiled_ops.select_commit_in_place,
                    "the whole step as one torch.compile graph (Inductor"
                    f"{' C++ on CPU' if cpu else ', CUDA'}): {'grouped matmul' if grouped else 'SDPA'} candidate "
                    "attention, exact top-k, select + commit"
                    + (", linears on oneDNN-packed weights" if _packs(device, dtype) else ""))


# name -> loader(device, head_dims, dtype, k) -> OpsTable, raising BackendUnavailable with the reason
OPS_TABLES: dict[str, Callable[..., OpsTable]] = {
    "static": _static_ops, "static-triton": _triton_ops, "static-csrc": _csrc_ops, "static-compiled": _compiled_ops}
COMPILED = ("static-compiled",)   # the tables whose engine compiles its step


def bucket_slots(needed: int) -> int:
    """Cache slots allocated by the compiled step for a request needing ``needed``: the next power of two
    from 256 up to 4096, then the next multiple of 4096. Every request of a bucket reuses one compiled
    graph; the price is attention over up to twice the slots a request needs (masked, so the result is
    the same), small next to the weights for these models."""
    if needed <= 256:
        return 256
    if needed <= 4096:
        return 1 << (needed - 1).bit_length()
    return -(-needed // 4096) * 4096


# ------------------------------------------------------------------------------------------ engine
class StaticEngine:
    """Implements the :class:`~args_fast.engine.backends.base.Engine` contract on static runners.

    ``reward`` may be None: then, with ``reward_head`` (a RewardHead on the policy's final hidden states,
    ``(B, k, H) -> (B, k)`` float32), the step is fused (see the module docstring); without one, the
    step is the policy's own top-k greedy / sampling (scores are the logits; w is ignored), the
    baseline "plain decode through the same engine"."""

    def __init__(self, policy, reward, ops: OpsTable, *, k: int, w: float, temperature: float, eos_ids,
                 pad_id: int, use_graph: bool | None = None, reward_head=None, compile_step: bool = False):
        if reward is not None and reward_head is not None:
            raise ValueError("give a reward runner or a reward_head on the policy, not both")
        self.policy, self.reward, self.reward_head, self.ops = policy, reward, reward_head, ops
        self.fused = reward_head is not None
        self.k, self.w, self.temperature, self.pad_id = k, float(w), float(temperature), pad_id
        self.eos_ids = list(eos_ids) if eos_ids else None
        self.device = policy.device
        self.eos = torch.tensor(self.eos_ids, dtype=torch.long, device=self.device) if eos_ids else None
        same_device = reward is None or reward.device == self.device
        if use_graph is None:
            use_graph = self.device.type == "cuda" and same_device
        if use_graph and (self.device.type != "cuda" or not same_device):
            raise ValueError("use_graph=True needs CUDA with policy and reward model on one device")
        if compile_step and (use_graph or not same_device):
            raise ValueError("compile_step runs the step as one compiled graph: it needs both models on one "
                             "device and no CUDA-graph capture of its own")
        self.use_graph, self.same_device = use_graph, same_device
        self.compile_step = compile_step
        # first-call seconds of each compiled graph, by (batch, cache slots, "greedy" / "stochastic")
        self.compile_seconds: dict[tuple[int, int, str], float] = {}
        self.packed = any(isinstance(m, PackedLinear) for r in (policy, reward) if r is not None for m in r.modules())
        if compile_step:
            _allow_recompiles()
            self._compiled_body = self._new_compiled_body()
        self.pcache = self.rcache = None
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self.nonfinite = torch.zeros(0, dtype=torch.bool, device=self.device)

    # -------------------------------------------------------------------------------- state
    def allocate(self, batch: int, slots: int):
        """Caches for ``batch`` rows of up to ``slots`` tokens (prompt + new), so a benchmark can size
        them before timing; ``prefill`` calls it when its request does not fit."""
        # Drop the old caches and graphs (whose pools hold their memory) before allocating the new ones:
        # at 7B scale each cache is tens of GB and both would not fit at once.
        self.graphs.clear()
        self.pcache = self.rcache = None
        self.pcache = self.policy.new_cache(batch, slots + (self.k if self.fused else 0))
        if self.reward is not None:
            self.rcache = self.reward.new_cache(batch, slots + self.k)
        dev = self.device
        vocab = self.policy.head.out_features
        self.logits = torch.zeros(batch, vocab, dtype=torch.float32, device=dev)   # static graph input
        self.finished = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.uniforms = torch.zeros(batch, self.k, dtype=torch.float32, device=dev)
        self.token = torch.zeros(batch, dtype=torch.long, device=dev)              # static graph outputs
        self.chosen_reward = torch.zeros(batch, dtype=torch.float32, device=dev)
        self.nonfinite = torch.zeros(batch, dtype=torch.bool, device=dev)   # see the Engine contract
        self.rows = torch.arange(batch, device=dev)
        if self.fused and self.reward_head.mix is not None:   # each head's chosen reward
            self.chosen_objectives = torch.zeros(batch, self.reward_head.n, dtype=torch.float32, device=dev)

    @property
    def slots(self) -> int:
        """Token slots of the caches (prompt + new tokens; the k candidate slots come on top)."""
        return self.pcache.slots - (self.k if self.fused else 0)

    def compiled_for(self, batch: int, prompt_len: int, max_new_tokens: int, greedy: bool) -> bool:
        """True when a request of this shape would run a graph this engine has already compiled."""
        if self.pcache is None or self.pcache.batch != batch:
            return False
        slots = max(self.slots, bucket_slots(prompt_len + max_new_tokens))
        return (batch, slots, "greedy" if greedy else "stochastic") in self.compile_seconds

    @property
    def head_dims(self) -> tuple[int, int]:
        """(policy, reward) attention head dims, for the self-check."""
        return self.policy.spec.head_dim, (self.reward if self.reward is not None else self.policy).spec.head_dim

    def memory_bytes(self) -> dict[str, int]:
        return {"policy_kv": self.pcache.nbytes() if self.pcache else 0,
                "reward_kv": self.rcache.nbytes() if self.rcache else 0}

    # -------------------------------------------------------------------------------- compiling
    def _new_compiled_body(self):
        """``torch.compile`` of ``_step_body`` through a copy of its code object: Dynamo keeps graphs per
        code object, so this engine's graphs (which name its packed weights by key) are its own."""
        fn = StaticEngine._step_body
        code = fn.__code__.replace(co_name=f"_step_body_of_engine_{id(self):x}")
        own = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        return torch.compile(types.MethodType(own, self), fullgraph=True, dynamic=False)

    def _check_weights(self):
        """Packed layers hold a copy of the weights: those whose weights changed since are packed again
        (the graphs name the packed weights by key, so nothing recompiles)."""
        if self.packed:
            for runner in (self.policy, self.reward):
                if runner is not None:
                    repack_changed(runner)

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask, max_new_tokens):
        batch, prompt = input_ids.shape
        needed = prompt + max_new_tokens
        if self.compile_step:
            self._check_weights()
            needed = bucket_slots(needed)
            if self.pcache is not None and self.pcache.batch == batch and self.slots >= needed:
                needed = self.slots   # a larger cache of this batch size is already compiled for: keep it
        if self.pcache is None or self.pcache.batch != batch or self.slots != needed and (
                self.compile_step or self.slots < needed):
            self.allocate(batch, needed)
        self.max_new_tokens = max_new_tokens
        ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
        hidden = self.policy.prefill(ids, mask, self.pcache)
        self.logits.copy_(self.policy.outputs(hidden[:, -1]))
        if self.reward is not None:
            self.reward.prefill(ids.to(self.reward.device), mask.to(self.reward.device), self.rcache)
        self.finished.zero_()
        self.steps = 0

    # -------------------------------------------------------------------------------- the step
    def _body(self, uniforms, run_policy: bool = True):
        """One ARGS step on the engine's static tensors (the graph-captured region)."""
        top_logits, top_ids = self.ops.topk(self.logits, self.k)
        if self.fused:
            self._fused_body(top_logits, top_ids, uniforms, run_policy)
            return
        if self.reward is None:
            choice, token, reward, new_finished = torch_ops.select_candidates(
                top_logits, top_ids, torch.zeros_like(top_logits), 0.0, uniforms, self.temperature,
                self.finished, self.eos, self.pad_id)
            self.finished.copy_(new_finished)
        else:
            rdev = self.reward.device
            rewards = self.reward.outputs(self.reward.decode(top_ids.to(rdev), self.rcache, self.ops.attention))
            self.nonfinite.copy_(~rewards.isfinite().all(-1).to(self.device) & ~self.finished)
            if self.same_device:
                choice, token, reward = self.ops.select_commit(
                    top_logits, top_ids, rewards, uniforms, self.w, self.temperature, self.finished, self.eos,
                    self.pad_id, self.rcache.keys, self.rcache.values, self.rcache.prefix_end)
            else:  # select where the logits live, commit where the reward cache lives
                choice, token, reward, new_finished = torch_ops.select_candidates(
                    top_logits, top_ids, rewards.to(self.device), self.w, uniforms, self.temperature,
                    self.finished, self.eos, self.pad_id)
                self.finished.copy_(new_finished)
                self.rcache.commit(choice.to(rdev))
        self.token.copy_(token)
        self.chosen_reward.copy_(reward)
        if run_policy:   # the chosen token's K/V go into the policy cache as it computes the next logits
            self.logits.copy_(self.policy.outputs(self.policy.decode(self.token[:, None], self.pcache,
                                                                     self.ops.attention)[:, -1]))
            self.pcache.prefix_end.add_(1)

    def _fused_body(self, top_logits, top_ids, uniforms, run_policy: bool):
        # the k candidates go through the policy itself, into slots prefix_end + j of its own cache
        hidden = self.policy.decode(top_ids, self.pcache, self.ops.attention)          # (B, k, H)
        rewards, objectives = self.reward_head.score(hidden)   # objectives: (B, k, n) when heads are mixed
        self.nonfinite.copy_(~rewards.isfinite().all(-1) & ~self.finished)
        choice, token, reward = self.ops.select_commit(
            top_logits, top_ids, rewards, uniforms, self.w, self.temperature, self.finished, self.eos,
            self.pad_id, self.pcache.keys, self.pcache.values, self.pcache.prefix_end)   # advances prefix_end
        if objectives is not None:
            self.chosen_objectives.copy_(objectives[self.rows, choice])
        self.token.copy_(token)
        self.chosen_reward.copy_(reward)
        if run_policy:   # the winner's hidden state is the next position's: the LM head on it
            self.logits.copy_(self.policy.outputs(hidden[self.rows, choice]))

    def _step_body(self, uniforms):
        """The compiled region: one whole step. It always runs the policy's decode of the winner, also on
        the last step (one spare forward, inside the caches), so that one graph serves every step."""
        self._body(uniforms, run_policy=True)

    def _compiled_step(self, uniforms):
        key = (self.pcache.batch, self.slots, "greedy" if uniforms is None else "stochastic")
        if key in self.compile_seconds:
            self._compiled_body(uniforms)
            return
        start = time.perf_counter()
        self._compiled_body(uniforms)
        self.compile_seconds[key] = time.perf_counter() - start

    def _capture(self, greedy: bool) -> torch.cuda.CUDAGraph:
        """Warm up (compiles Triton kernels, initialises cuBLAS) on a side stream, restore the state the
        warm-up advanced, then capture. Warm-up writes to cache slots at or after each prefix end only,
        which the real step overwrites before reading."""
        state = [self.logits, self.finished, self.pcache.prefix_end, self.token, self.chosen_reward, self.nonfinite]
        if self.rcache is not None:
            state.append(self.rcache.prefix_end)
        saved = [t.clone() for t in state]
        uniforms = None if greedy else self.uniforms
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._body(uniforms)
                # restore after EACH run: two runs from the same state write the same slots, so the
                # warm-up stays inside the caches even when max_new_tokens == 1
                for t, s in zip(state, saved):
                    t.copy_(s)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(uniforms)
        for t, s in zip(state, saved):   # capture does not run kernels; restore anyway for clarity
            t.copy_(s)
        return graph

    @torch.no_grad()
    def step(self, uniforms, last: bool = False):
        """Returns the engine's static (token, chosen_reward, finished) buffers: read (or copy) them
        before the next step."""
        if self.steps >= self.max_new_tokens:
            raise RuntimeError(f"step {self.steps + 1} exceeds max_new_tokens={self.max_new_tokens} "
                               "the caches were sized for")
        self.steps += 1
        if uniforms is not None:
            if uniforms.shape != self.uniforms.shape:
                raise ValueError(f"uniforms must have shape {tuple(self.uniforms.shape)}, got {tuple(uniforms.shape)}")
            self.uniforms.copy_(uniforms, non_blocking=True)
        if self.compile_step:
            self._compiled_step(None if uniforms is None else self.uniforms)
        elif self.use_graph:
            greedy = uniforms is None
            if greedy not in self.graphs:
                self.graphs[greedy] = self._capture(greedy)
            self.graphs[greedy].replay()   # `last` still runs the policy step: one spare forward, within the cache
        else:
            self._body(None if uniforms is None else self.uniforms, run_policy=not last)
        return self.token, self.chosen_reward, self.finished


def _allow_recompiles() -> None:
    """An engine adds a graph to its code object per (batch, cache bucket, mode): raise Dynamo's
    per-code-object limit (8) so that an engine serving many shapes keeps compiling instead of silently
    running the step eagerly."""
    import torch._dynamo.config as dynamo_config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name) and getattr(dynamo_config, name) < 256:
            setattr(dynamo_config, name, 256)
            break


def build_static_engine(ops_name: str, policy, reward_model, *, k: int, w: float, temperature: float, eos_ids,
                        pad_id: int, use_graph: bool | None = None, reward_head=None) -> StaticEngine:
    """The static engine on the ops table ``OPS_TABLES[ops_name]`` for a Hugging Face ``policy`` (causal LM)
    and ``reward_model`` (one-label sequence classifier; None = the policy's plain decode, or the fused
    step with ``reward_head``, a :class:`~args_fast.rewards.head.RewardHead` on the policy). Raises
    :class:`BackendUnavailable` saying why when these models or this device cannot run it. Options
    are assumed validated (``ARGSDecoder`` does that)."""
    from ..runners import static_runner, unsupported_reason
    roles = [("policy", policy, "lm")] + ([("reward_model", reward_model, "reward")] if reward_model is not None else [])
    for name, model, role in roles:
        if not isinstance(model, torch.nn.Module):
            raise BackendUnavailable(f"{name} is not a torch module")
        reason = unsupported_reason(model, role)
        if reason is not None:
            raise BackendUnavailable(f"{name}: {reason}")
    runners = [static_runner(model, role) for _, model, role in roles]
    ops = OPS_TABLES[ops_name](runners[0].device, [r.spec.head_dim for r in runners], runners[0].dtype, k)
    compiled = ops_name in COMPILED
    if compiled and len({r.device for r in runners}) > 1:
        raise BackendUnavailable("the compiled step needs the policy and the reward model on one device")
    if compiled and _packs(runners[0].device, runners[0].dtype):
        # rows per step: the k candidates through whichever runner scores them, one token otherwise
        pack_linears(runners[0], rows=k if reward_head is not None else 1, head_rows=1)
        if reward_model is not None:
            pack_linears(runners[1], rows=k, head_rows=k)
    return StaticEngine(runners[0], runners[1] if reward_model is not None else None, ops, k=k, w=w,
                        temperature=temperature, eos_ids=eos_ids, pad_id=pad_id,
                        use_graph=False if compiled else use_graph, reward_head=reward_head, compile_step=compiled)
