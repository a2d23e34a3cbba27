"""Engines for vocabulary-level rewards (:mod:`args_fast.rewards.vocab`): the policy runner plus one
decode per token of each extra LM, composed by :class:`~args_fast.engine.backends.base.ComposedEngine`.

* ``reference``: the policy alone per row (``ReferencePolicy``); every candidate's reward recomputed
  from full-sequence log-probabilities of prompt + generated + candidate (no cache): the oracle.
* ``hf``: ``HFPolicyRunner`` (left-padded batch, slot cache) for the policy and each extra LM.
* ``static*``: the static runners with the backend's attention and top-k ops, run eagerly (no CUDA
  graph: the extra models' decodes are plain per-token steps, and the table is read with one gather).

A callable :class:`~args_fast.rewards.vocab.TokenReward` source is called once per step on the
left-padded sequences so far (hf, static*), or per row, unpadded, on the reference backend.
"""
from __future__ import annotations

import torch

from ...rewards.vocab import VocabReward, response_token_rewards
from .base import ComposedEngine
from .hf_runners import HFPolicyRunner, check_maskable
from .reference import ReferencePolicy, _rows
from .static_engine import OPS_TABLES, BackendUnavailable


class _LogitsTap:
    """A policy runner that keeps its last logits, for a reward that reads the policy's own."""

    def __init__(self, runner):
        self.runner, self.last = runner, None

    def prefill(self, input_ids, attention_mask, max_new_tokens):
        self.last = self.runner.prefill(input_ids, attention_mask, max_new_tokens)
        return self.last

    def step(self, tokens):
        self.last = self.runner.step(tokens)
        return self.last


class StaticPolicyRunner:
    """The :class:`~args_fast.engine.backends.base.PolicyRunner` contract on a ``StaticRunner`` (a static
    cache of ``P + max_new_tokens`` slots; one decode of the chosen token per step). Eager: no CUDA
    graph (the step is a plain decode, and the engine around it is the composed one)."""

    def __init__(self, runner, attention):
        self.runner, self.attention, self.cache = runner, attention, None

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask, max_new_tokens):
        batch, prompt = input_ids.shape
        if self.cache is None or self.cache.batch != batch or self.cache.slots < prompt + max_new_tokens:
            self.cache = None   # free the old cache first: at scale both would not fit at once
            self.cache = self.runner.new_cache(batch, prompt + max_new_tokens)
        device = self.runner.device
        hidden = self.runner.prefill(input_ids.to(device), attention_mask.to(device), self.cache)
        return self.runner.outputs(hidden[:, -1])

    @torch.no_grad()
    def step(self, tokens):
        hidden = self.runner.decode(tokens.to(self.runner.device)[:, None], self.cache, self.attention)
        self.cache.prefix_end.add_(1)
        return self.runner.outputs(hidden[:, -1])


class CachedVocabReward:
    """RewardRunner: each step's ``(B, V)`` token-reward table from the models' next-token logits (the
    policy's through the tap, the others from their own runners), read with one gather; the running sum
    of the chosen tokens' rewards on device. The table is built in ``score``, after the policy's step."""

    def __init__(self, reward: VocabReward, policy, tap: _LogitsTap, make_runner):
        self.reward, self.tap, self.device = reward, tap, policy.device
        self.runners = [None if lm is policy else make_runner(lm) for lm in reward.lms]

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask, max_new_tokens):
        self.logits = [None if r is None else r.prefill(input_ids, attention_mask, max_new_tokens)
                       for r in self.runners]
        self.total = torch.zeros(input_ids.shape[0], device=self.device)
        if self.reward.fn is not None:   # a callable sees the left-padded sequences so far
            self.ids, self.mask = input_ids.to(self.device), attention_mask.to(self.device).long()

    @torch.no_grad()
    def score(self, candidate_ids):
        if self.reward.fn is not None:
            self.table = self.reward.call_fn(self.ids, self.mask).to(self.device)
        else:
            logits = [self.tap.last if l is None else l.to(self.device) for l in self.logits]
            self.table = self.reward.token_rewards(logits)
        own = self.table.gather(1, candidate_ids.to(self.device))
        return own + self.total[:, None] if self.reward.cumulative else own

    @torch.no_grad()
    def commit(self, choice, tokens):
        tokens = tokens.to(self.device)
        if self.reward.cumulative:
            self.total += self.table.gather(1, tokens[:, None]).squeeze(1)
        self.logits = [None if r is None else r.step(tokens) for r in self.runners]
        if self.reward.fn is not None:
            self.ids = torch.cat([self.ids, tokens[:, None]], 1)
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)


class ReferenceVocabReward:
    """RewardRunner, literally: for each row (unpadded) and candidate, the token rewards of the whole
    response recomputed from full forwards of prompt + generated + candidate."""

    def __init__(self, reward: VocabReward, device):
        self.reward, self.device = reward, device

    def prefill(self, input_ids, attention_mask, max_new_tokens):
        self.contexts = _rows(input_ids.to(self.device), attention_mask.to(self.device))
        self.prompt_lens = [len(c) for c in self.contexts]

    @torch.no_grad()
    def score(self, candidate_ids):
        rows = []
        for context, n, candidates in zip(self.contexts, self.prompt_lens, candidate_ids.to(self.device)):
            seqs = torch.cat([context.expand(len(candidates), -1), candidates[:, None]], 1)
            terms = response_token_rewards(self.reward, seqs, n)          # (k, response length)
            rows.append(terms.sum(-1) if self.reward.cumulative else terms[:, -1])
        return torch.stack(rows).to(self.device)

    def commit(self, choice, tokens):
        tokens = tokens.to(self.device)
        self.contexts = [torch.cat([c, t.view(1)]) for c, t in zip(self.contexts, tokens)]


def build_vocab_engine(backend: str, policy, reward: VocabReward, options) -> ComposedEngine:
    """The engine of ``backend`` ("reference", "hf", "static", "static-triton" or "static-csrc") for
    ``policy`` (a Hugging Face causal LM) and a vocabulary-level ``reward``; ``options`` has k, w,
    temperature, eos_ids and pad_id (``registry.Options``). Raises BackendUnavailable saying why this
    backend cannot run these models, ValueError / TypeError when the reward cannot go with the policy."""
    reward.check(policy)
    if backend == "reference":
        return ComposedEngine(ReferencePolicy(policy), ReferenceVocabReward(reward, policy.device), **vars(options))
    models = [("policy", policy)] + reward.extra_models(policy)
    if backend == "hf":
        for name, model in models:
            check_maskable(name, model)
        tap = _LogitsTap(HFPolicyRunner(policy))
        return ComposedEngine(tap, CachedVocabReward(reward, policy, tap, HFPolicyRunner), **vars(options))
    if backend not in OPS_TABLES:
        raise BackendUnavailable(f"unknown backend {backend!r}")
    from ..runners import static_runner, unsupported_reason
    for name, model in models:
        reason = unsupported_reason(model, "lm")
        if reason is not None:
            raise BackendUnavailable(f"{name}: {reason}")
    # each model decodes with the ops of its own device and dtype (an extra model may live elsewhere)
    runners = {id(m): static_runner(m, "lm") for _, m in models}
    ops = {key: OPS_TABLES[backend](r.device, [r.spec.head_dim], r.dtype, options.k)
           for key, r in runners.items()}

    def runner(lm) -> StaticPolicyRunner:
        return StaticPolicyRunner(runners[id(lm)], ops[id(lm)].attention)

    tap = _LogitsTap(runner(policy))
    engine = ComposedEngine(tap, CachedVocabReward(reward, policy, tap, runner), topk=ops[id(policy)].topk,
                            **vars(options))
    engine.ops = ops[id(policy)]   # the decoder's backend_description names the ops
    return engine
