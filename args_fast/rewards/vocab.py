"""Vocabulary-level rewards: every next token's reward from one forward at the current position.

No k-candidate pass: the policy decodes, each extra model decodes the same token once per step, and a
candidate's reward is read off a ``(B, V)`` table. Two kinds:

* :class:`ImplicitReward` -- the implicit reward of a DPO- or AIHF-trained model against its reference,
  ``r(x, y_<=t) = beta * sum_{s<=t} [log pi_tuned(y_s | x, y_<s) - log pi_ref(y_s | x, y_<s)]``
  over the generated tokens (not the prompt). When the tuned model is the policy, its logits are the
  policy's own: only the reference runs extra.
* :class:`TokenReward` -- token-level rewards: a GenARM-style autoregressive reward model (its
  log-softmax over the vocabulary), or any callable giving ``(B, V)`` rewards for the next position.

A candidate ``v``'s reward at step t is its own token reward, plus (implicit rewards, and token rewards
with ``cumulative=True``) the running sum of the chosen tokens' rewards so far; so ``.rewards`` of
``generate`` is the reward of the chosen continuation, as for a sequence reward model. The running
sum is the same for every candidate of a row, so it never changes the choice.

The engines are in ``args_fast/engine/backends/vocab_reward.py``; the ``reference`` backend recomputes every candidate's
reward from full-sequence log-probabilities, the oracle the others are tested against.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import hf


def _causal_lm(name: str, model) -> nn.Module:
    if not (isinstance(model, nn.Module) and hf.is_hf_model(model) and hasattr(model, "get_output_embeddings")
            and model.get_output_embeddings() is not None and hf.is_causal_lm(model)):
        raise TypeError(f"{name} must be a Hugging Face causal LM (*ForCausalLM), got {type(model).__name__}")
    return model


def _vocab(model) -> int:
    return model.get_output_embeddings().out_features


class VocabReward:
    """The common contract. ``models``: the named causal LMs whose next-token logits the reward reads (the
    policy itself may be one of them: its logits are reused); :meth:`token_rewards` turns their ``(B, V)``
    logits (in that order) into ``(B, V)`` float32 token rewards. ``fn``: a callable giving the ``(B, V)``
    table itself instead (:class:`TokenReward`), else None.

    ``policy`` arguments default to the policy last passed to :meth:`check` (the decoder checks the
    reward against its policy before anything else)."""

    cumulative: bool = True
    fn = None

    def __init__(self, models: list[tuple[str, nn.Module]]):
        self.models = models
        self._policy, self._vocab = None, None

    @property
    def lms(self) -> list[nn.Module]:
        return [m for _, m in self.models]

    def extra_models(self, policy=None) -> list[tuple[str, nn.Module]]:
        """The models that run besides ``policy``, named for error messages."""
        policy = self._policy if policy is None else policy
        return [(name, m) for name, m in self.models if m is not policy]

    def check(self, policy) -> None:
        """Raise a ValueError naming the argument when this reward cannot go with ``policy``."""
        vocab = _vocab(policy)
        for name, model in self.extra_models(policy):
            if _vocab(model) != vocab:
                raise ValueError(f"{name} has a vocabulary of {_vocab(model)} tokens, the policy {vocab}: token "
                                 "rewards must be over the policy's vocabulary")
        self._policy, self._vocab = policy, vocab

    def token_rewards(self, logits: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def describe(self, policy=None) -> str:
        """One line for the CLI: what the reward is and what it costs per token."""
        raise NotImplementedError

    def sequence_rewards(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[float]:
        """The summed token rewards of each complete response after its prompt, computed the literal way
        (full forwards, no cache): the sequence reward the evaluation commands report (for a cumulative
        reward, the last ``.rewards`` of a generated row)."""
        out = []
        for prompt, response in zip(prompt_ids, response_ids):
            if not response:
                out.append(0.0)
                continue
            seq = torch.tensor(prompt + response)
            out.append(float(response_token_rewards(self, seq[None], len(prompt))[0].sum()))
        return out


class ImplicitReward(VocabReward):
    """``beta * sum log(pi_tuned / pi_ref)`` over the generated tokens; see the module docstring.

    ``tuned_lm`` and ``reference_lm`` are Hugging Face causal LMs on the policy's vocabulary (and
    tokenizer). Pass the policy itself as ``tuned_lm`` when it is the tuned model (one extra decode per
    token, of the reference). ``beta``: a finite float in [-1e30, 1e30]."""

    cumulative = True

    def __init__(self, tuned_lm, reference_lm, beta: float):
        from ..validation import W_LIMIT, as_float
        self.tuned_lm = _causal_lm("tuned_lm", tuned_lm)
        self.reference_lm = _causal_lm("reference_lm", reference_lm)
        if tuned_lm is reference_lm:
            raise ValueError("tuned_lm and reference_lm are the same model: the implicit reward would be 0")
        self.beta = as_float("beta", beta, -W_LIMIT, W_LIMIT)
        super().__init__([("tuned_lm", self.tuned_lm), ("reference_lm", self.reference_lm)])

    def token_rewards(self, logits):
        tuned, ref = logits
        return self.beta * (torch.log_softmax(tuned.float(), -1) - torch.log_softmax(ref.float(), -1))

    def describe(self, policy=None) -> str:
        policy = self._policy if policy is None else policy
        who, cost = (("the policy", "one extra decode (the reference) per token") if self.tuned_lm is policy
                     else ("a separate model", "two extra decodes per token"))
        return f"implicit reward beta*(log pi_tuned - log pi_ref), beta={self.beta:g}, tuned = {who}: {cost}"


class TokenReward(VocabReward):
    """Token-level rewards ``scale * t(x)[v]`` for the next token v after context x.

    ``source`` is a Hugging Face causal LM (GenARM-style autoregressive reward model: ``t`` is its
    log-softmax), or a callable ``fn(input_ids (B, L) int64, attention_mask (B, L) int64) -> (B, V)``
    giving each left-padded row's token rewards for its next position (called once per step on the
    whole sequence so far). ``cumulative=True`` adds the running sum of the chosen tokens' rewards
    (GenARM's sequence reward); the choice is the same either way, only ``.rewards`` differs."""

    def __init__(self, source, scale: float = 1.0, cumulative: bool = False):
        from ..validation import W_LIMIT, as_float
        if isinstance(source, nn.Module) and hf.is_hf_model(source):
            self.lm = _causal_lm("source", source)
            super().__init__([("source", self.lm)])
        elif callable(source):
            self.lm, self.fn = None, source
            super().__init__([])
        else:
            raise TypeError(f"source must be a Hugging Face causal LM or a callable (input_ids, attention_mask) -> "
                            f"(B, V) rewards, got {type(source).__name__}")
        self.scale = as_float("scale", scale, -W_LIMIT, W_LIMIT)
        if not isinstance(cumulative, bool):
            raise TypeError(f"cumulative must be True or False, got {cumulative!r}")
        self.cumulative = cumulative

    def token_rewards(self, logits):
        return self.scale * torch.log_softmax(logits[0].float(), -1)

    def call_fn(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The callable's ``(B, V)`` float32 rewards (V: the checked policy's vocabulary), its output checked."""
        out = self.fn(input_ids, attention_mask)
        want = (input_ids.shape[0], self._vocab or "V")
        contract = (f"TokenReward's callable fn(input_ids (B, L), attention_mask (B, L)) must return a "
                    f"(B, V) = {want} tensor of token rewards for the next position")
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{contract}, got {type(out).__name__}")
        if out.dim() != 2 or out.shape[0] != want[0] or (self._vocab and out.shape[1] != self._vocab):
            raise ValueError(f"{contract}, got shape {tuple(out.shape)}")
        return self.scale * out.float()

    def describe(self, policy=None) -> str:
        what = "log-softmax of an autoregressive reward LM" if self.lm is not None else "a token-reward callable"
        how = "summed over the response" if self.cumulative else "of the candidate token"
        cost = "one extra decode per token" if self.lm is not None else "one call per token"
        return f"token reward: {what} x {self.scale:g}, {how}: {cost}"


def response_token_rewards(reward: VocabReward, seqs: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The literal definition: ``seqs (N, L)`` unpadded sequences sharing a prompt of ``prompt_len``
    tokens -> ``(N, L - prompt_len)`` float32, the token reward of each response token given everything
    before it, from full forwards with no cache."""
    positions = range(prompt_len - 1, seqs.shape[1] - 1)   # the logits at position s predict token s + 1
    targets = seqs[:, prompt_len:]
    if reward.fn is not None:
        ones = torch.ones_like(seqs)
        table = torch.stack([reward.call_fn(seqs[:, :s + 1], ones[:, :s + 1]) for s in positions], 1)   # (N, T, V)
    else:
        with torch.no_grad():
            logits = [lm(input_ids=seqs.to(lm.device)).logits[:, prompt_len - 1:-1].float().to(seqs.device)
                      for lm in reward.lms]
        table = reward.token_rewards(logits)
    return table.gather(-1, targets[..., None].to(table.device)).squeeze(-1)
