"""Vocabulary-level rewards (ImplicitReward, TokenReward) on every backend against the literal reference.

The reference backend recomputes every candidate's reward from full-sequence log-probabilities of
prompt + generated + candidate (no cache); hf and the static backends read one (B, V) table per step
from cached decodes. Same tokens, rewards within 1e-4, on padded batches (a one-token prompt among
them) with rows stopping at different EOS steps, greedy and stochastic; and the reported rewards are
checked against a sum of log-probabilities recomputed here by hand from the final sequences.
"""
import functools
import os

import pytest
import torch

import args_fast
import tiny_models
from args_fast import ImplicitReward, TokenReward
from args_fast.engine import csrc_ops
from args_fast.engine.backends.base import ComposedEngine
from args_fast.engine.backends.registry import Options
from args_fast.engine.backends.static_engine import BackendUnavailable
from args_fast.engine.backends.vocab_reward import build_vocab_engine
from tiny_models import VOCAB, assert_same_output as assert_same, make_model, most_staggered_eos, padded_prompts

BACKENDS = (("hf", "static") + (("static-csrc",) if csrc_ops.available() else ())
            + (("static-triton",) if os.environ.get("TRITON_INTERPRET") == "1" else ()))
LENGTHS = [7, 3, 12, 1]
STEPS = 7
run = functools.partial(tiny_models.generate_padded, lengths=LENGTHS)


@functools.lru_cache(maxsize=None)
def lms(variant, seed=0):
    """A policy and two other LMs of ``variant``, peaked so that logits and log-ratios decide."""
    return tuple(make_model(variant, "lm", seed + i, peaked="weights", attn="eager", context=64) for i in range(3))


def table_fn():
    """A padding-invariant callable: token rewards from the row's last two real tokens (the last one
    alone on a one-token row; padding, masked out, adds nothing)."""
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(11))

    def fn(input_ids, attention_mask):
        assert input_ids.shape == attention_mask.shape and bool(attention_mask[:, -1].all())
        out = table[input_ids[:, -1]]
        if input_ids.shape[1] > 1:
            out = out + 0.5 * table[input_ids[:, -2]].roll(1, -1) * attention_mask[:, -2, None]
        return out
    return fn


def rewards_of(kind, variant):
    policy, tuned, ref = lms(variant)
    return policy, {"implicit-tuned-is-policy": lambda: ImplicitReward(policy, ref, 0.8),
                    "implicit-tuned-separate": lambda: ImplicitReward(tuned, ref, 1.7),
                    "token-lm": lambda: TokenReward(ref, scale=1.3),
                    "token-lm-cumulative": lambda: TokenReward(ref, scale=1.3, cumulative=True),
                    "token-fn": lambda: TokenReward(table_fn(), scale=0.9),
                    "token-fn-cumulative": lambda: TokenReward(table_fn(), scale=0.9, cumulative=True)}[kind]()


KINDS = ("implicit-tuned-is-policy", "implicit-tuned-separate", "token-lm", "token-lm-cumulative", "token-fn",
         "token-fn-cumulative")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_with_staggered_eos(kind, mode, backend):
    policy, reward = rewards_of(kind, "llama-gqa-hd16")
    eos = most_staggered_eos(run(policy, reward, "hf", mode).sequences[:, max(LENGTHS):])
    ref = run(policy, reward, "reference", mode, eos=[eos])
    assert ref.rewards.isnan().any() and not ref.rewards.isnan().all(), "test setup: rows must stop at different steps"
    assert_same(ref, run(policy, reward, backend, mode, eos=[eos]))


@pytest.mark.parametrize("variant", tiny_models.ENGINE_VARIANTS[1:])   # GPT-2 and OPT shapes (Llama above)
@pytest.mark.parametrize("k", [1, 4, VOCAB])
def test_other_families_and_k(variant, k):
    for kind in ("implicit-tuned-is-policy", "implicit-tuned-separate", "token-lm-cumulative"):
        policy, reward = rewards_of(kind, variant)
        want = run(policy, reward, "reference", "stochastic", k=k, seed=2)
        for backend in ("hf", "static"):
            assert_same(want, run(policy, reward, backend, "stochastic", k=k, seed=2))


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_one_engine_serves_requests_of_other_shapes(backend):
    """build_vocab_engine's engine, reused by one decoder: caches (re)sized per request, state reset."""
    policy, reward = rewards_of("implicit-tuned-separate", "opt-hd16")
    options = Options(k=4, w=1.5, temperature=0.7, eos_ids=None, pad_id=0)
    decoder = args_fast.ARGSDecoder(policy, reward, engine=build_vocab_engine(backend, policy, reward, options),
                                    k=4, w=1.5, mode="stochastic", eos_token_id=[], pad_token_id=0)
    oracle = args_fast.ARGSDecoder(policy, reward, backend="reference", k=4, w=1.5, mode="stochastic",
                                   eos_token_id=[], pad_token_id=0)
    for lengths, steps in (([7, 3, 12, 1], 5), ([2, 15], 9), ([4, 1, 6], 3)):
        ids, mask = padded_prompts(lengths, seed=len(lengths))
        got, want = (d.generate(ids, mask, max_new_tokens=steps, generator=torch.Generator().manual_seed(4))
                     for d in (decoder, oracle))
        assert_same(want, got)


def test_an_extra_model_of_a_family_the_static_runners_do_not_map():
    policy = lms("llama-gqa-hd16")[0]
    neox = make_model("gpt-neox", "lm", 5, peaked="weights", attn="eager", context=64)
    reward = ImplicitReward(policy, neox, 1.2)
    assert_same(run(policy, reward, "reference", "stochastic"), run(policy, reward, "hf", "stochastic"))
    options = Options(k=4, w=1.5, temperature=0.7, eos_ids=None, pad_id=0)
    with pytest.raises(BackendUnavailable, match="reference_lm: model_type 'gpt_neox' is not one of"):
        build_vocab_engine("static", policy, reward, options)
    with pytest.raises(ValueError, match="backend='static' cannot run these models: reference_lm: model_type"):
        run(policy, reward, "static")
    flex = make_model("llama-gqa-hd16", "lm", 6, attn="eager")
    flex.config._attn_implementation = "flex_attention"
    with pytest.raises(BackendUnavailable, match="reference_lm uses attention 'flex_attention'"):
        build_vocab_engine("hf", policy, ImplicitReward(policy, flex, 1.0), options)


def log_probs(lm, seq):
    with torch.no_grad():
        return torch.log_softmax(lm(input_ids=seq[None]).logits[0].float(), -1)


@pytest.mark.parametrize("backend", ["reference", "hf", "static"])
@pytest.mark.parametrize("tuned_is_policy", [True, False])
def test_implicit_reward_is_beta_times_the_summed_log_ratio(backend, tuned_is_policy):
    """Recomputed by hand from the final sequences: reward at step t = beta * sum_{s<=t} log pi/pi_ref."""
    policy, other, ref = lms("opt-hd16")
    tuned = policy if tuned_is_policy else other
    out = run(policy, ImplicitReward(tuned, ref, 0.6), backend, "stochastic", steps=5)
    ids, mask = padded_prompts(LENGTHS)
    for b in range(len(LENGTHS)):
        seq = torch.cat([ids[b, mask[b].bool()], out.sequences[b, ids.shape[1]:]])
        n = int(mask[b].sum())
        lp, lr = log_probs(tuned, seq), log_probs(ref, seq)
        terms = torch.stack([lp[s - 1, seq[s]] - lr[s - 1, seq[s]] for s in range(n, len(seq))])
        torch.testing.assert_close(out.rewards[b], 0.6 * terms.cumsum(0), rtol=0, atol=1e-4)


@pytest.mark.parametrize("source", ["lm", "fn"])
def test_cumulative_changes_the_reported_rewards_not_the_tokens(source):
    policy, _, ref = lms("gpt2-hd16")
    src = ref if source == "lm" else table_fn()
    a = run(policy, TokenReward(src, 2.0), "hf", "stochastic")
    b = run(policy, TokenReward(src, 2.0, cumulative=True), "hf", "stochastic")
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(b.rewards, a.rewards.cumsum(1), rtol=0, atol=1e-4)


def test_only_the_reference_model_runs_extra_when_the_policy_is_tuned():
    policy, tuned, ref = lms("llama-gqa-hd16")
    reward = ImplicitReward(policy, ref, 1.0)
    assert reward.extra_models(policy) == [("reference_lm", ref)]
    assert reward.extra_models(tuned) == [("tuned_lm", policy), ("reference_lm", ref)]
    calls = {"policy": 0, "tuned": 0, "ref": 0}
    hooks = [m.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
             for name, m in (("policy", policy), ("tuned", tuned), ("ref", ref))]
    try:
        decoder = args_fast.ARGSDecoder(policy, reward, k=4, backend="hf", eos_token_id=[])
        assert isinstance(decoder.engine, ComposedEngine)
        assert "tuned = the policy: one extra decode (the reference) per token" in decoder.backend_description
        ids, mask = padded_prompts(LENGTHS)
        decoder.generate(ids, mask, max_new_tokens=STEPS)
    finally:
        for h in hooks:
            h.remove()
    # prefill + one decode per step but the last (whose next logits nobody reads), for each model that runs
    assert calls == {"policy": STEPS, "tuned": 0, "ref": STEPS}
    assert "tuned = a separate model: two extra decodes" in ImplicitReward(tuned, ref, 1.0).describe(policy)


@pytest.mark.parametrize("kind", ["implicit-tuned-is-policy", "token-lm-cumulative", "token-fn-cumulative"])
def test_sequence_rewards_equal_the_generated_rewards(kind):
    policy, reward = rewards_of(kind, "llama-gqa-hd16")
    out = run(policy, reward, "hf", steps=4)
    ids, mask = padded_prompts(LENGTHS)
    prompts = [ids[b, mask[b].bool()].tolist() for b in range(len(LENGTHS))]
    responses = out.sequences[:, ids.shape[1]:].tolist()
    got = reward.sequence_rewards(prompts, responses)
    torch.testing.assert_close(torch.tensor(got), out.rewards[:, -1], rtol=0, atol=1e-4)
    assert reward.sequence_rewards([prompts[0]], [[]]) == [0.0]


def test_errors_name_the_argument():
    policy, tuned, ref = lms("llama-gqa-hd16")
    other_vocab = make_model("llama-gqa-hd16", "lm", 3, vocab=VOCAB + 5)
    ids, mask = padded_prompts([3])
    with pytest.raises(ValueError, match="reference_lm has a vocabulary of 101 tokens, the policy 96"):
        args_fast.generate(policy, ImplicitReward(policy, other_vocab, 1.0), ids, mask)
    with pytest.raises(ValueError, match="source has a vocabulary of"):
        args_fast.generate(policy, TokenReward(other_vocab), ids, mask, backend="hf")
    with pytest.raises(ValueError, match="beta must be a number"):
        ImplicitReward(policy, ref, True)
    with pytest.raises(ValueError, match="beta must be a finite number"):
        ImplicitReward(policy, ref, float("nan"))
    with pytest.raises(ValueError, match="scale must be a finite number"):
        TokenReward(ref, scale=float("inf"))
    with pytest.raises(ValueError, match="the same model"):
        ImplicitReward(ref, ref, 1.0)
    with pytest.raises(TypeError, match="reference_lm must be a Hugging Face causal LM"):
        ImplicitReward(policy, torch.nn.Linear(2, 2), 1.0)
    with pytest.raises(TypeError, match="tuned_lm must be a Hugging Face causal LM"):
        ImplicitReward(tiny_models.make_reward("llama"), ref, 1.0)
    with pytest.raises(TypeError, match="source must be a Hugging Face causal LM or a callable"):
        TokenReward(3)
    with pytest.raises(TypeError, match="cumulative must be True or False"):
        TokenReward(ref, cumulative=1)
    contract = r"TokenReward's callable fn\(input_ids \(B, L\), attention_mask \(B, L\)\) must return a \(B, V\)"
    for backend in ("reference", "hf", "static"):
        bad = TokenReward(lambda ids, mask: torch.zeros(ids.shape[0], VOCAB - 1))
        with pytest.raises(ValueError, match=contract + r" = \((\d+), 96\) tensor .*, got shape \(\1, 95\)"):
            args_fast.generate(policy, bad, ids, mask, max_new_tokens=2, backend=backend)
        listed = TokenReward(lambda ids, mask: [[0.0] * VOCAB])
        with pytest.raises(TypeError, match=contract + ".*, got list"):
            args_fast.generate(policy, listed, ids, mask, max_new_tokens=2, backend=backend)
    nan = TokenReward(lambda ids, mask: torch.full((ids.shape[0], VOCAB), float("nan")))
    with pytest.raises(ValueError, match="NaN or infinite reward to a candidate at step 0"):
        args_fast.generate(policy, nan, ids, mask, max_new_tokens=2, backend="hf")
