"""Vocabulary-level rewards (ImplicitReward, TokenReward) on every backend against the literal reference.

The reference backend recomputes every candidate's reward from full-sequence log-probabilities of
prompt + generated + candidate (no cache); hf and the static backends read one (B, V) table per step
from cached decodes. Same tokens, rewards within 1e-4, on padded batches with rows stopping at
different EOS steps, greedy and stochastic; and the reported rewards are checked against a sum of
log-probabilities recomputed here by hand from the final sequences.
"""
import functools
import os

import pytest
import torch

import args_fast
from args_fast import ImplicitReward, TokenReward
from args_fast.backends.engine import ComposedEngine
from tiny_models import (ENGINE_VARIANTS, VOCAB, make_model, padded_prompts,
                         PARITY_LENGTHS as LENGTHS, assert_same_output as assert_same, generate_padded as run,
                         most_staggered_eos)

BACKENDS = ("hf", "static", "static-csrc") + (("static-triton",) if os.environ.get("TRITON_INTERPRET") == "1" else ())
STEPS = 7


@functools.lru_cache(maxsize=None)
def lms(variant, seed=0):
    """A policy and two other LMs of ``variant``, peaked so that logits and log-ratios decide."""
    return tuple(make_model(variant, "lm", seed + i, peaked="weights", attn="eager", context=64) for i in range(3))


def rewards_of(kind, variant):
    policy, tuned, ref = lms(variant)
    return policy, {"implicit-tuned-is-policy": ImplicitReward(policy, ref, 0.8),
                    "implicit-tuned-separate": ImplicitReward(tuned, ref, 1.7),
                    "token-lm": TokenReward(ref, scale=1.3),
                    "token-lm-cumulative": TokenReward(ref, scale=1.3, cumulative=True),
                    "token-fn": TokenReward(table_fn(), scale=0.9)}[kind]


def table_fn():
    """A padding-invariant callable: token rewards from the row's last two real tokens."""
    g = torch.Generator().manual_seed(11)
    table = torch.randn(VOCAB, VOCAB, generator=g)

    def fn(input_ids, attention_mask):
        assert input_ids.shape == attention_mask.shape and bool(attention_mask[:, -1].all())
        return table[input_ids[:, -1]] + 0.5 * table[input_ids[:, -2]].roll(1, -1)
    return fn


KINDS = ("implicit-tuned-is-policy", "implicit-tuned-separate", "token-lm", "token-lm-cumulative", "token-fn")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_with_staggered_eos(kind, mode, backend):
    policy, reward = rewards_of(kind, "llama-gqa-hd16")
    eos = most_staggered_eos(run(policy, reward, "hf", mode).sequences[:, max(LENGTHS):])
    ref = run(policy, reward, "reference", mode, eos=[eos])
    assert ref.rewards.isnan().any() and not ref.rewards.isnan().all(), "test setup: rows must stop at different steps"
    assert_same(ref, run(policy, reward, backend, mode, eos=[eos]))


@pytest.mark.parametrize("variant", ENGINE_VARIANTS[1:])   # GPT-2 and OPT shapes (Llama above)
@pytest.mark.parametrize("k", [1, 4, VOCAB])
def test_other_families_and_k(variant, k):
    for kind in ("implicit-tuned-is-policy", "token-lm-cumulative"):
        policy, reward = rewards_of(kind, variant)
        for backend in ("hf", "static"):
            assert_same(run(policy, reward, "reference", "stochastic", k=k, seed=2),
                        run(policy, reward, backend, "stochastic", k=k, seed=2))


def log_probs(lm, seq):
    with torch.no_grad():
        return torch.log_softmax(lm(input_ids=seq[None]).logits[0].float(), -1)


@pytest.mark.parametrize("backend", ["reference", "hf"])
def test_implicit_reward_is_beta_times_the_summed_log_ratio(backend):
    """Recomputed by hand from the final sequences: reward at step t = beta * sum_{s<=t} log pi/pi_ref."""
    policy, _, ref = lms("opt-hd16")
    out = run(policy, ImplicitReward(policy, ref, 0.6), backend, "stochastic", steps=5)
    ids, mask = padded_prompts(LENGTHS)
    for b in range(len(LENGTHS)):
        seq = torch.cat([ids[b, mask[b].bool()], out.sequences[b, ids.shape[1]:]])
        n = int(mask[b].sum())
        lp, lr = log_probs(policy, seq), log_probs(ref, seq)
        terms = torch.stack([lp[s - 1, seq[s]] - lr[s - 1, seq[s]] for s in range(n, len(seq))])
        torch.testing.assert_close(out.rewards[b], 0.6 * terms.cumsum(0), rtol=0, atol=1e-4)


def test_cumulative_changes_the_reported_rewards_not_the_tokens():
    policy, _, ref = lms("gpt2-hd16")
    a = run(policy, TokenReward(ref, 2.0), "hf", "stochastic")
    b = run(policy, TokenReward(ref, 2.0, cumulative=True), "hf", "stochastic")
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(b.rewards, a.rewards.cumsum(1), rtol=0, atol=1e-4)


def test_only_the_reference_model_runs_extra_when_the_policy_is_tuned():
    policy, tuned, ref = lms("llama-gqa-hd16")
    calls = {"policy": 0, "tuned": 0, "ref": 0}
    hooks = [m.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
             for name, m in (("policy", policy), ("tuned", tuned), ("ref", ref))]
    try:
        decoder = args_fast.ARGSDecoder(policy, ImplicitReward(policy, ref, 1.0), k=4, backend="hf", eos_token_id=[])
        assert isinstance(decoder.engine, ComposedEngine)
        assert "tuned = the policy: one extra decode (the reference) per token" in decoder.backend_description
        ids, mask = padded_prompts(LENGTHS)
        decoder.generate(ids, mask, max_new_tokens=STEPS)
    finally:
        for h in hooks:
            h.remove()
    # prefill + one decode per step but the last (whose next logits nobody reads), for each model that runs
    assert calls == {"policy": STEPS, "tuned": 0, "ref": STEPS}


def test_sequence_rewards_equal_the_generated_rewards():
    policy, _, ref = lms("llama-gqa-hd16")
    reward = ImplicitReward(policy, ref, 0.5)
    out = run(policy, reward, "hf", steps=4)
    ids, mask = padded_prompts(LENGTHS)
    prompts = [ids[b, mask[b].bool()].tolist() for b in range(len(LENGTHS))]
    responses = out.sequences[:, ids.shape[1]:].tolist()
    got = reward.sequence_rewards(prompts, responses)
    torch.testing.assert_close(torch.tensor(got), out.rewards[:, -1], rtol=0, atol=1e-4)


def test_errors_name_the_argument():
    policy, tuned, ref = lms("llama-gqa-hd16")
    other_vocab = make_model("llama-gqa-hd16", "lm", 3, vocab=VOCAB + 5)
    ids, mask = padded_prompts([3])
    with pytest.raises(ValueError, match="reference_lm has a vocabulary of"):
        args_fast.generate(policy, ImplicitReward(policy, other_vocab, 1.0), ids, mask)
    with pytest.raises(ValueError, match="beta must be a number"):
        ImplicitReward(policy, ref, True)
    with pytest.raises(ValueError, match="beta must be a finite number"):
        ImplicitReward(policy, ref, float("nan"))
    with pytest.raises(ValueError, match="the same model"):
        ImplicitReward(ref, ref, 1.0)
    with pytest.raises(TypeError, match="reference_lm must be a Hugging Face causal LM"):
        ImplicitReward(policy, torch.nn.Linear(2, 2), 1.0)
    with pytest.raises(TypeError, match="source must be a Hugging Face causal LM or a callable"):
        TokenReward(3)
    with pytest.raises(TypeError, match="cumulative must be True or False"):
        TokenReward(ref, cumulative=1)
    bad = TokenReward(lambda ids, mask: torch.zeros(ids.shape[0], VOCAB - 1))
    with pytest.raises(ValueError, match=r"must return a \(B, V\) = \(1, %d\) tensor" % VOCAB):
        args_fast.generate(policy, bad, ids, mask, max_new_tokens=2)
    nan = TokenReward(lambda ids, mask: torch.full((ids.shape[0], VOCAB), float("nan")))
    with pytest.raises(ValueError, match="NaN or infinite reward to a candidate at step 0"):
        args_fast.generate(policy, nan, ids, mask, max_new_tokens=2, backend="hf")
