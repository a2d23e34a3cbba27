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

The engines are in ``backends/vocab_reward.py``; the ``reference`` backend recomputes every candidate's
reward from full-sequence log-probabilities, the oracle the others are tested against.
"""
from __future__ import annotations

import torch
from torch import nn

from . import hf


def _causal_lm(name: str, model) -> nn.Module:
    if not (isinstance(model, nn.Module) and hf.is_hf_model(model) and hasattr(model, "get_output_embeddings")
            and model.get_output_embeddings() is not None and hf.is_causal_lm(model)):
        raise TypeError(f"{name} must be a Hugging Face causal LM (*ForCausalLM), got {type(model).__name__}")
    return model


def _vocab(model) -> int:
    return model.get_output_embeddings().out_features


class VocabReward:
    """The common contract. ``lms``: the causal LMs whose next-token logits the reward reads (the policy
    itself may be one of them: its logits are reused); :meth:`token_rewards` turns their ``(B, V)``
    logits (in the order of ``lms``) into ``(B, V)`` float32 token rewards."""

    cumulative: bool = True
    lms: list = []

    def extra_models(self) -> list[tuple[str, nn.Module]]:
        """The models that run besides the policy, named for error messages."""
        raise NotImplementedError

    def check(self, policy) -> None:
        """Raise a ValueError naming the argument when this reward cannot go with ``policy``."""
        vocab = _vocab(policy)
        for name, model in self.extra_models():
            if _vocab(model) != vocab:
                raise ValueError(f"{name} has a vocabulary of {_vocab(model)} tokens, the policy {vocab}: token "
                                 "rewards must be over the policy's vocabulary")

    def token_rewards(self, logits: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def sequence_rewards(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[float]:
        """The summed token rewards of each complete response after its prompt, computed the literal way
        (full forwards, no cache): the sequence reward the evaluation commands report."""
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
    token, of the reference)."""

    cumulative = True

    def __init__(self, tuned_lm, reference_lm, beta: float):
        from .decoder import W_LIMIT, as_float
        self.tuned_lm = _causal_lm("tuned_lm", tuned_lm)
        self.reference_lm = _causal_lm("reference_lm", reference_lm)
        if tuned_lm is reference_lm:
            raise ValueError("tuned_lm and reference_lm are the same model: the implicit reward would be 0")
        self.beta = as_float("beta", beta, -W_LIMIT, W_LIMIT)
        self.lms = [self.tuned_lm, self.reference_lm]

    def extra_models(self):
        return [(n, m) for n, m in (("tuned_lm", self.tuned_lm), ("reference_lm", self.reference_lm))
                if m is not getattr(self, "_policy", None)]

    def check(self, policy) -> None:
        self._policy = policy
        super().check(policy)

    def token_rewards(self, logits):
        tuned, ref = logits
        return self.beta * (torch.log_softmax(tuned.float(), -1) - torch.log_softmax(ref.float(), -1))

    def describe(self) -> str:
        who = "the policy" if self.tuned_lm is getattr(self, "_policy", None) else "a separate model"
        extra = "one extra decode (the reference) per token" if who == "the policy" else "two extra decodes per token"
        return f"implicit reward beta*(log pi_tuned - log pi_ref), beta={self.beta:g}, tuned = {who}: {extra}"


class TokenReward(VocabReward):
    """Token-level rewards ``scale * t(x)[v]`` for the next token v after context x.

    ``source`` is a Hugging Face causal LM (GenARM-style autoregressive reward model: ``t`` is its
    log-softmax), or a callable ``fn(input_ids (B, L) int64, attention_mask (B, L) int64) -> (B, V)``
    giving each left-padded row's token rewards for its next position (called once per step on the
    whole sequence so far). ``cumulative=True`` adds the running sum of the chosen tokens' rewards
    (GenARM's sequence reward); the choice is the same either way, only ``.rewards`` differs."""

    def __init__(self, source, scale: float = 1.0, cumulative: bool = False):
        from .decoder import W_LIMIT, as_float
        if isinstance(source, nn.Module) and hf.is_hf_model(source):
            self.lm, self.fn = _causal_lm("source", source), None
            self.lms = [self.lm]
        elif callable(source):
            self.lm, self.fn = None, source
            self.lms = []
        else:
            raise TypeError(f"source must be a Hugging Face causal LM or a callable (input_ids, attention_mask) -> "
                            f"(B, V) rewards, got {type(source).__name__}")
        self.scale = as_float("scale", scale, -W_LIMIT, W_LIMIT)
        if not isinstance(cumulative, bool):
            raise TypeError(f"cumulative must be True or False, got {cumulative!r}")
        self.cumulative = cumulative
        self._vocab = None

    def extra_models(self):
        return [("source", self.lm)] if self.lm is not None else []

    def check(self, policy) -> None:
        super().check(policy)
        self._vocab = _vocab(policy)

    def token_rewards(self, logits):
        return self.scale * torch.log_softmax(logits[0].float(), -1)

    def call_fn(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The callable's ``(B, V)`` float32 rewards, its output checked."""
        out = self.fn(input_ids, attention_mask)
        want = (input_ids.shape[0], self._vocab) if self._vocab else None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or (want and tuple(out.shape) != want):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"TokenReward's callable must return a (B, V) = {want or '(B, V)'} tensor of token rewards "
                             f"for the next position, got {got}")
        return self.scale * out.float()

    def describe(self) -> str:
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
    if isinstance(reward, TokenReward) and reward.fn is not None:
        ones = torch.ones_like(seqs)
        table = torch.stack([reward.call_fn(seqs[:, :s + 1], ones[:, :s + 1]) for s in positions], 1)   # (N, T, V)
    else:
        with torch.no_grad():
            logits = [lm(input_ids=seqs.to(lm.device)).logits[:, prompt_len - 1:-1].float().to(seqs.device)
                      for lm in reward.lms]
        table = reward.token_rewards(logits)
    return table.gather(-1, targets[..., None].to(table.device)).squeeze(-1)
