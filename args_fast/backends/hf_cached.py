"""The ``torch`` backend: Hugging Face models with a shared-prefix slot cache, in plain PyTorch.

Policy: left-padded batch, one cached decode step per token. Reward model: its cache holds each
row's prefix once; each step the k candidates of a row go through the model as k tokens at the same
position, each masked to see the row's prefix and itself, all B*k in ONE forward call; then only the
winner's K/V is kept (``SlotKVCache.commit``).
"""
from __future__ import annotations

import torch

from ..cache import SlotKVCache
from ..hf import positions_from_mask, prefix_mask, reward_of_hidden, to_attention_mask


class _SlotRunner:
    """Shared bookkeeping: which slots are real tokens, and each row's next position."""

    def __init__(self, model, max_new_tokens: int, extra_slots: int):
        self.model, self.device = model, model.device
        self.max_new_tokens, self.extra_slots = max_new_tokens, extra_slots

    def _start(self, input_ids, attention_mask):
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        batch, prompt = input_ids.shape
        slots = prompt + self.max_new_tokens + self.extra_slots
        self.cache = SlotKVCache(self.model.config.num_hidden_layers, batch, slots)
        # visible[b, s]: slot s holds a real token of row b (prompt padding is False); preallocated.
        self.visible = torch.zeros(batch, slots, dtype=torch.bool, device=self.device)
        self.visible[:, :prompt] = attention_mask.bool()
        self.next_pos = attention_mask.long().sum(-1)   # (B,) position of the next token
        return input_ids, attention_mask

    def _prefill_inputs(self, input_ids, attention_mask):
        mask = to_attention_mask(prefix_mask(attention_mask), self.model)
        return dict(input_ids=input_ids, attention_mask=mask, position_ids=positions_from_mask(attention_mask),
                    past_key_values=self.cache, use_cache=True)


class CachedPolicy(_SlotRunner):
    def __init__(self, policy, max_new_tokens: int):
        super().__init__(policy, max_new_tokens, extra_slots=0)

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask):
        input_ids, attention_mask = self._start(input_ids, attention_mask)
        logits = self.model(**self._prefill_inputs(input_ids, attention_mask), logits_to_keep=1).logits
        self.cache.advance(input_ids.shape[1])
        return logits[:, -1].float()

    @torch.no_grad()
    def step(self, tokens):
        length = self.cache.length
        self.visible[:, length] = True
        mask = to_attention_mask(self.visible[:, None, None, :length + 1], self.model)
        logits = self.model(input_ids=tokens.to(self.device)[:, None], attention_mask=mask,
                            position_ids=self.next_pos[:, None], past_key_values=self.cache,
                            use_cache=True, logits_to_keep=1).logits
        self.cache.advance(1)
        self.next_pos += 1
        return logits[:, -1].float()


class CachedReward(_SlotRunner):
    def __init__(self, reward_model, max_new_tokens: int, k: int):
        super().__init__(reward_model, max_new_tokens, extra_slots=k)
        self.reward_model, self.backbone, self.k = reward_model, reward_model.base_model, k
        self.forward_calls = 0
        self.eye = torch.eye(k, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def prefill(self, input_ids, attention_mask):
        input_ids, attention_mask = self._start(input_ids, attention_mask)
        self.backbone(**self._prefill_inputs(input_ids, attention_mask))
        self.cache.advance(input_ids.shape[1])

    @torch.no_grad()
    def score(self, candidate_ids):
        batch, k = candidate_ids.shape
        length = self.cache.length
        # Candidate j of row b sees row b's real prefix slots and its own slot length + j only.
        visible = torch.cat([self.visible[:, None, :length].expand(batch, k, length),
                             self.eye[:k, :k].expand(batch, k, k)], dim=-1)[:, None]
        hidden = self.backbone(input_ids=candidate_ids.to(self.device),
                               attention_mask=to_attention_mask(visible, self.model),
                               position_ids=self.next_pos[:, None].expand(batch, k),
                               past_key_values=self.cache, use_cache=True).last_hidden_state
        self.forward_calls += 1
        return reward_of_hidden(self.reward_model, hidden)

    def commit(self, choice, tokens):
        self.visible[:, self.cache.length] = True
        self.cache.commit(choice.to(self.device))
        self.next_pos += 1
