"""The compiled ARGS engine: native runners, static KV caches, one CUDA graph per decode step.

One ARGS step, every shape static (B rows, k candidates):

    top-k of the policy logits -> reward model pass over the k candidates (k query tokens per row at
    the same position, K/V into the k slots after the prefix, ``attention`` op) -> score head ->
    ``select_commit`` (choose, emit, mark EOS, commit the winner's K/V in the reward cache, advance
    its prefix) -> policy decode of the chosen token (writes its K/V, next logits).

The per-step ops come from an ops table, so the same engine runs on the torch reference ops
(``args_fast.ops``), the Triton kernels (``args_fast.kernels``) or the compiled ops
(``args_fast.compiled``). On CUDA, with both models on one device, the whole step is captured once as
a CUDA graph (per engine, i.e. per (B, k, cache size, mode)) and replayed; the prefix windows are
device tensors, so the graph is valid at every length. On CPU, or with the models on different
devices, the step runs eagerly (the graph path needs one device: select_commit touches the policy's
logits and the reward model's cache in one op).

Cache memory: the policy holds (layers, B, H_kv, P + T, D); the reward model holds each row's
prefix once plus k candidate slots, (layers, B, H_kv, P + T + k, D).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .. import ops as torch_ops
from ..native import native_model, unsupported_reason

NATIVE_BACKENDS = ("native", "triton", "cuda")
COMPILED_TOPK_MAX_K = 64   # csrc/kernels.h kTopkMaxK


# ------------------------------------------------------------------------------------------ ops
def torch_topk(logits: torch.Tensor, k: int):
    values, indices = logits.float().topk(k, dim=-1)
    return values, indices


def torch_select_commit(top_logits, top_ids, rewards, uniforms, w, temperature, finished, eos_ids, pad_id,
                        k_cache, v_cache, prefix_end):
    """select_candidates + commit_slots_, with the in-place contract of the fused kernels."""
    choice, token, reward, new_finished = torch_ops.select_candidates(
        top_logits, top_ids, rewards, w, uniforms, temperature, finished, eos_ids, pad_id)
    torch_ops.commit_slots_(k_cache, v_cache, prefix_end, choice)
    finished.copy_(new_finished)
    prefix_end.add_(1)
    return choice, token, reward


def sdpa_candidate_attention(q, k_cache, v_cache, prefix_start, prefix_end, scale=None):
    """``candidate_attention`` through torch SDPA with a (B, 1, k, S) mask over the whole cache
    (static shapes; reads every slot, so it costs the full cache length every step)."""
    batch, _, k, _ = q.shape
    pos = torch.arange(k_cache.shape[2], device=q.device)
    j = torch.arange(k, device=q.device)[:, None]
    start, end = prefix_start.view(batch, 1, 1), prefix_end.view(batch, 1, 1)
    visible = ((pos >= start) & (pos < end)) | (pos == end + j)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible[:, None], scale=scale,
                                          enable_gqa=k_cache.shape[1] != q.shape[1])


@dataclass(frozen=True)
class NativeOps:
    name: str
    attention: Callable     # args_fast.ops.candidate_attention contract
    topk: Callable          # (logits (B, V), k) -> (values fp32 (B, k), ids int64 (B, k)), descending
    select_commit: Callable  # torch_select_commit contract


def _triton_modules(on_cuda: bool):
    if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ImportError("the models are not on CUDA, and TRITON_INTERPRET=1 (Triton's CPU interpreter, set "
                          "before Triton is imported) is not set")
    from ..kernels.candidate_attention import candidate_attention
    from ..kernels.select_commit import select_commit
    return candidate_attention, select_commit


def triton_attention_supports(head_dim: int) -> bool:
    """The Triton candidate attention tiles D with tl.dot: a power of two in [16, 256]."""
    return 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0


def load_ops(backend: str, device: torch.device | None = None, head_dim: int | None = None) -> NativeOps:
    """The ops table of ``backend``; raises ImportError (with the reason) when it cannot be loaded.

    native: torch reference ops (SDPA attention on CUDA, the float32 reference on CPU).
    triton: Triton candidate attention + Triton select_commit + torch.topk.
    cuda:   compiled select_commit + compiled topk + Triton attention (SDPA, or the float32 reference on
            CPU, when Triton is missing or does not support ``head_dim``).
    """
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if backend == "native":
        attention = sdpa_candidate_attention if on_cuda else torch_ops.candidate_attention
        return NativeOps("native", attention, torch_topk, torch_select_commit)
    if backend == "triton":
        if head_dim is not None and not triton_attention_supports(head_dim):
            raise ImportError(f"the Triton candidate attention needs a power-of-two head dim in [16, 256], got {head_dim}")
        attention, select_commit = _triton_modules(on_cuda)
        return NativeOps("triton", attention, torch_topk, select_commit)
    if backend == "cuda":
        from .. import compiled
        if not compiled.available():
            raise ImportError(compiled.unavailable_reason())
        if on_cuda and not compiled.cuda_available():
            raise ImportError("args_fast._C was built without its CUDA kernels")
        try:
            if head_dim is not None and not triton_attention_supports(head_dim):
                raise ImportError("head dim unsupported by the Triton attention")
            attention, _ = _triton_modules(on_cuda)
        except ImportError:
            attention = sdpa_candidate_attention if on_cuda else torch_ops.candidate_attention

        def topk(logits, k):   # the compiled radix select handles k <= 64 (static per engine)
            return compiled.topk_logits(logits, k) if k <= COMPILED_TOPK_MAX_K else torch_topk(logits, k)
        return NativeOps("cuda", attention, topk, compiled.select_commit)
    raise ValueError(f"backend must be one of {NATIVE_BACKENDS}, got {backend!r}")


def native_engine_available(backend: str, policy, reward_model) -> tuple[bool, str]:
    """Whether ``make_native_engine(backend, policy, reward_model, ...)`` can run, and why not."""
    if backend not in NATIVE_BACKENDS:
        return False, f"backend must be one of {NATIVE_BACKENDS}, got {backend!r}"
    for name, model, role in (("policy", policy, "lm"), ("reward_model", reward_model, "reward")):
        if not isinstance(model, torch.nn.Module):
            return False, f"{name} is not a torch module"
        reason = unsupported_reason(model, role)
        if reason is not None:
            return False, f"{name}: {reason}"
    if policy.config.vocab_size != reward_model.config.vocab_size:
        return False, "policy and reward_model vocabularies differ"
    try:
        for model, role in ((policy, "lm"), (reward_model, "reward")):
            load_ops(backend, policy.device, native_model(model, role).spec.head_dim)
    except Exception as exc:   # ImportError, or a failed build / load of the compiled extension
        return False, f"{backend} ops unavailable: {type(exc).__name__}: {exc}"
    return True, "ok"


# ------------------------------------------------------------------------------------------ engine
class NativeEngine:
    """Implements the Engine contract (``backends/engine.py``) on native runners.

    ``reward`` may be None: then the step is the policy's own top-k greedy / sampling (scores are the
    logits; w is ignored), the baseline "plain decode through the same engine"."""

    def __init__(self, policy, reward, ops: NativeOps, *, k: int, w: float, temperature: float, eos_ids,
                 pad_id: int, max_new_tokens: int, batch_size: int | None = None,
                 max_prompt_len: int | None = None, use_graph: bool | None = None):
        self.policy, self.reward, self.ops = policy, reward, ops
        self.k, self.w, self.temperature, self.pad_id = k, float(w), float(temperature), pad_id
        self.max_new_tokens = max_new_tokens
        self.device = policy.device
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long, device=self.device) if eos_ids else None
        same_device = reward is None or reward.device == self.device
        if use_graph is None:
            use_graph = self.device.type == "cuda" and same_device
        if use_graph and (self.device.type != "cuda" or not same_device):
            raise ValueError("use_graph=True needs CUDA with policy and reward model on one device")
        self.use_graph, self.same_device = use_graph, same_device
        self.pcache = self.rcache = None
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        if batch_size is not None and max_prompt_len is not None:
            self._allocate(batch_size, max_prompt_len)

    # -------------------------------------------------------------------------------- state
    def _allocate(self, batch: int, prompt_len: int):
        # Drop the old caches and graphs (whose pools hold their memory) before allocating the new ones:
        # at 7B scale each cache is tens of GB and both would not fit at once.
        self.graphs.clear()
        self.pcache = self.rcache = None
        slots = prompt_len + self.max_new_tokens
        self.pcache = self.policy.new_cache(batch, slots)
        if self.reward is not None:
            self.rcache = self.reward.new_cache(batch, slots + self.k)
        dev = self.device
        vocab = self.policy.head.out_features
        self.logits = torch.zeros(batch, vocab, dtype=torch.float32, device=dev)   # static graph input
        self.finished = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.uniforms = torch.zeros(batch, self.k, dtype=torch.float32, device=dev)
        self.token = torch.zeros(batch, dtype=torch.long, device=dev)              # static graph outputs
        self.chosen_reward = torch.zeros(batch, dtype=torch.float32, device=dev)

    def memory_bytes(self) -> dict[str, int]:
        return {"policy_kv": self.pcache.nbytes() if self.pcache else 0,
                "reward_kv": self.rcache.nbytes() if self.rcache else 0}

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask):
        batch, prompt = input_ids.shape
        if (self.pcache is None or self.pcache.batch != batch
                or self.pcache.slots < prompt + self.max_new_tokens):
            self._allocate(batch, prompt)
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
        if self.reward is None:
            choice, token, reward, new_finished = torch_ops.select_candidates(
                top_logits, top_ids, torch.zeros_like(top_logits), 0.0, uniforms, self.temperature,
                self.finished, self.eos, self.pad_id)
            self.finished.copy_(new_finished)
        else:
            rdev = self.reward.device
            rewards = self.reward.outputs(self.reward.decode(top_ids.to(rdev), self.rcache, self.ops.attention))
            if self.same_device:
                choice, token, reward = self.ops.select_commit(
                    top_logits, top_ids, rewards, uniforms, self.w, self.temperature, self.finished, self.eos,
                    self.pad_id, self.rcache.keys, self.rcache.values, self.rcache.prefix_end)
            else:  # select where the logits live, commit where the reward cache lives
                choice, token, reward, new_finished = torch_ops.select_candidates(
                    top_logits, top_ids, rewards.to(self.device), self.w, uniforms, self.temperature,
                    self.finished, self.eos, self.pad_id)
                self.finished.copy_(new_finished)
                torch_ops.commit_slots_(self.rcache.keys, self.rcache.values, self.rcache.prefix_end,
                                        choice.to(rdev))
                self.rcache.prefix_end.add_(1)
        self.token.copy_(token)
        self.chosen_reward.copy_(reward)
        if run_policy:   # the chosen token's K/V go into the policy cache as it computes the next logits
            self.logits.copy_(self.policy.outputs(self.policy.decode(self.token[:, None], self.pcache,
                                                                     self.ops.attention)[:, -1]))
            self.pcache.prefix_end.add_(1)

    def _capture(self, greedy: bool) -> torch.cuda.CUDAGraph:
        """Warm up (compiles Triton kernels, initialises cuBLAS) on a side stream, restore the state the
        warm-up advanced, then capture. Warm-up writes to cache slots at or after each prefix end only,
        which the real step overwrites before reading."""
        state = [self.logits, self.finished, self.pcache.prefix_end, self.token, self.chosen_reward]
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
        if self.use_graph:
            greedy = uniforms is None
            if greedy not in self.graphs:
                self.graphs[greedy] = self._capture(greedy)
            self.graphs[greedy].replay()   # `last` still runs the policy step: one spare forward, within the cache
        else:
            self._body(None if uniforms is None else self.uniforms, run_policy=not last)
        return self.token, self.chosen_reward, self.finished


def make_native_engine(backend: str, policy, reward_model, *, k: int, w: float, temperature: float, eos_ids,
                       pad_id: int, max_new_tokens: int, batch_size: int | None = None,
                       max_prompt_len: int | None = None, use_graph: bool | None = None) -> NativeEngine:
    """A :class:`NativeEngine` for Hugging Face ``policy`` (causal LM) and ``reward_model`` (one-label
    sequence classifier; None = plain decode of the policy). Caches are allocated at construction when
    ``batch_size`` and ``max_prompt_len`` are given, else at the first ``prefill`` (and again whenever a
    prefill does not fit). Options are assumed validated by ``ARGSDecoder``."""
    if reward_model is not None:
        ok, reason = native_engine_available(backend, policy, reward_model)
        if not ok:
            raise ValueError(f"native backend {backend!r} cannot run these models: {reason}")
    runner = native_model(policy, "lm")
    reward = None if reward_model is None else native_model(reward_model, "reward")
    dims = [runner.spec.head_dim] + ([] if reward is None else [reward.spec.head_dim])
    bad = [d for d in dims if not triton_attention_supports(d)]   # the attention op serves both models
    ops = load_ops(backend, policy.device, bad[0] if bad else dims[0])
    return NativeEngine(runner, reward, ops, k=k, w=w, temperature=temperature,
                        eos_ids=eos_ids, pad_id=pad_id, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        max_prompt_len=max_prompt_len, use_graph=use_graph)
