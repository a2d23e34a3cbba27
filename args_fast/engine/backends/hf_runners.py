"""The ``hf`` backend's runners: the Hugging Face models' own forwards over a shared-prefix slot cache.

Policy: left-padded batch, one cached decode step per token. Reward model: its cache
(:class:`~args_fast.engine.kv_cache.HFSlotCache`) holds each row's prefix once; each step the k candidates
of a row go through the model as k tokens at the same position, each masked to see the row's prefix
and itself (:func:`args_fast.engine.ops.candidate_visibility`), all B*k in ONE forward call; then only the
winner's K/V is kept (one gather/scatter over all layers).
"""
from __future__ import annotations

import torch

from ... import hf
from ...hf import reward_of_hidden, to_attention_mask
from ..kv_cache import HFSlotCache
from ..ops import candidate_visibility, positions_from_mask, prefix_mask, select_candidates, topk_logits
from .static_engine import BackendUnavailable


def check_maskable(name: str, model) -> None:
    """The hf runners pass their own 4-D masks: BackendUnavailable naming ``name`` when its attention cannot."""
    if hf.attn_implementation(model) not in hf.MASKABLE_ATTENTION:
        raise BackendUnavailable(f"{name} uses attention {hf.attn_implementation(model)!r}; the hf backend needs "
                                 f"one that takes an explicit 4-D mask {hf.MASKABLE_ATTENTION}")


class _SlotRunner:
    """Shared bookkeeping: the slot cache, each row's prefix window, each row's next position."""

    def __init__(self, model, extra_slots: int):
        self.model, self.device, self.extra_slots = model, model.device, extra_slots
        self.cache_kwarg = hf.cache_kwarg(model)     # the forward's name for the KV cache (transformers version)

    def _prefill(self, forward, input_ids, attention_mask, max_new_tokens):
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        batch, prompt = input_ids.shape
        self.cache = HFSlotCache(self.model.config.num_hidden_layers, batch, prompt + max_new_tokens + self.extra_slots)
        out = forward(input_ids=input_ids, attention_mask=to_attention_mask(prefix_mask(attention_mask), self.model),
                      position_ids=positions_from_mask(attention_mask), use_cache=True, **{self.cache_kwarg: self.cache})
        self.cache.advance(prompt)
        self.cache.storage.prefix_start.copy_(prompt - attention_mask.long().sum(-1))   # first real slot per row
        self.next_pos = attention_mask.long().sum(-1)                  # (B,) position of the next token
        return out

    def _mask(self, k: int):
        """(B, 1, k, length + k) mask in the model's format: the prefix plus each query's own slot."""
        storage = self.cache.storage
        visible = candidate_visibility(storage.prefix_start, storage.prefix_end, k, self.cache.length + k)
        return to_attention_mask(visible[:, None], self.model)


class HFPolicyRunner(_SlotRunner):
    def __init__(self, policy):
        super().__init__(policy, extra_slots=0)

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask, max_new_tokens):
        out = self._prefill(lambda **kw: self.model(**kw, logits_to_keep=1), input_ids, attention_mask, max_new_tokens)
        return out.logits[:, -1].float()

    @torch.no_grad()
    def step(self, tokens):
        logits = self.model(input_ids=tokens.to(self.device)[:, None], attention_mask=self._mask(1),
                            position_ids=self.next_pos[:, None], use_cache=True, logits_to_keep=1,
                            **{self.cache_kwarg: self.cache}).logits
        self.cache.advance(1)
        self.next_pos += 1
        return logits[:, -1].float()


class HFRewardRunner(_SlotRunner):
    def __init__(self, reward_model, k: int):
        super().__init__(reward_model, extra_slots=k)
        self.reward_model, self.backbone = reward_model, reward_model.base_model
        self.forward_calls = 0

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask, max_new_tokens):
        self._prefill(self.backbone, input_ids, attention_mask, max_new_tokens)

    @torch.no_grad()
    def score(self, candidate_ids):
        batch, k = candidate_ids.shape
        hidden = self.backbone(input_ids=candidate_ids.to(self.device), attention_mask=self._mask(k),
                               position_ids=self.next_pos[:, None].expand(batch, k),
                               use_cache=True, **{self.cache_kwarg: self.cache}).last_hidden_state
        self.forward_calls += 1
        return reward_of_hidden(self.reward_model, hidden)

    def commit(self, choice, tokens):
        self.cache.commit(choice.to(self.device))
        self.next_pos += 1


class HFFusedEngine:
    """The :class:`~args_fast.engine.backends.base.Engine` for a :class:`~args_fast.rewards.head.RewardHead`:
    one forward of the policy per token. The k candidates of every row go through the policy's
    backbone over its own prefix cache (as the reward runner above does with a reward model); the
    head on each candidate's final hidden state is its reward, the winner's K/V is kept, and the LM
    head on the winner's hidden state gives the next logits. So no separate decode of the chosen
    token, no second model, one cache of ``P + T + k`` slots."""

    # models whose logits are exactly ``lm_head(base_model(x).last_hidden_state)`` (no soft-capping,
    # logit scale or other post-processing that the fused step would skip)
    FAMILIES = ("llama", "mistral", "qwen2", "opt", "gpt2")

    def __init__(self, policy, head, *, k: int, w: float, temperature: float, eos_ids, pad_id: int,
                 topk=topk_logits, select=select_candidates):
        self.runner = _SlotRunner(policy, extra_slots=k)
        self.policy, self.head, self.topk, self.select = policy, head, topk, select
        self.backbone, self.lm_head = policy.base_model, policy.get_output_embeddings()
        self.k, self.w, self.temperature, self.pad_id = k, w, temperature, pad_id
        self.eos_ids = eos_ids
        self.nonfinite = torch.zeros(0, dtype=torch.bool)
        self.forward_calls = 0   # policy forwards during decoding (one per step)

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask, max_new_tokens):
        out = self.runner._prefill(lambda **kw: self.policy(**kw, logits_to_keep=1), input_ids, attention_mask,
                                   max_new_tokens)
        self.logits = out.logits[:, -1].float()
        device = self.logits.device
        self.finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
        self.eos = torch.tensor(self.eos_ids, device=device) if self.eos_ids else None
        self.rows = torch.arange(input_ids.shape[0], device=device)

    @torch.no_grad()
    def step(self, uniforms, last: bool = False):
        runner = self.runner
        top_logits, top_ids = self.topk(self.logits, self.k)
        batch, k = top_ids.shape
        hidden = self.backbone(input_ids=top_ids, attention_mask=runner._mask(k),
                               position_ids=runner.next_pos[:, None].expand(batch, k),
                               use_cache=True, **{runner.cache_kwarg: runner.cache}).last_hidden_state   # (B, k, H)
        self.forward_calls += 1
        rewards, objectives = self.head.score(hidden)   # objectives: (B, k, n) when heads are mixed
        self.nonfinite = ~rewards.isfinite().all(-1) & ~self.finished
        choice, token, chosen_reward, self.finished = self.select(
            top_logits, top_ids, rewards, self.w, uniforms, self.temperature, self.finished, self.eos, self.pad_id)
        if objectives is not None:
            self.chosen_objectives = objectives[self.rows, choice]
        if not last:
            runner.cache.commit(choice)
            runner.next_pos += 1
            self.logits = self.lm_head(hidden[self.rows, choice]).float()
        return token, chosen_reward, self.finished
