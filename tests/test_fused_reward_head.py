"""Reward heads on the policy's own backbone (one pass per token) against the literal reference.

The reference backend computes a RewardHead's reward the slow way (a full forward of every candidate
sequence through the policy's backbone, the policy's own decode for the logits); every other backend
runs the fused step (the k candidates through the policy over its cache, the LM head on the
winner). Same tokens, rewards within 1e-4, on padded batches with rows stopping at different EOS
steps, greedy and stochastic.
"""
import copy
import functools
import os

import pytest
import torch

import args_fast
from args_fast import RewardHead
from args_fast.engine import csrc_ops
from args_fast.engine.backends import registry
from args_fast.engine.backends.hf_runners import HFFusedEngine
from args_fast.engine.backends.static_engine import StaticEngine
from args_fast.rewards.head import shares_backbone
from tiny_models import (ENGINE_VARIANTS, VOCAB, make_model, padded_prompts,
                         PARITY_LENGTHS as LENGTHS, assert_same_output as assert_same, generate_padded as run,
                         most_staggered_eos)

BACKENDS = (("hf", "static") + (("static-csrc",) if csrc_ops.available() else ())
            + (("static-triton",) if os.environ.get("TRITON_INTERPRET") == "1" else ()))
STEPS = 7


@functools.lru_cache(maxsize=None)
def policy_and_head(variant, n=1, seed=0):
    """A peaked policy (attention and logits that decide) and a head of n rows with rewards of order 1."""
    policy = make_model(variant, "lm", seed, peaked="weights", attn="eager", context=64)
    hidden = policy.get_output_embeddings().in_features
    g = torch.Generator().manual_seed(seed + 100)
    weight = torch.randn(n, hidden, generator=g) * 2.0
    bias = torch.randn(n, generator=g)
    mix = torch.randn(n, generator=g) if n > 1 else None
    return policy, RewardHead(policy, weight, bias, mix)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
@pytest.mark.parametrize("variant", ENGINE_VARIANTS)
def test_fused_matches_reference_with_staggered_eos(variant, mode, backend):
    policy, head = policy_and_head(variant)
    eos = most_staggered_eos(run(policy, head, "hf", mode).sequences[:, max(LENGTHS):])
    ref = run(policy, head, "reference", mode, eos=[eos])
    assert ref.rewards.isnan().any() and not ref.rewards.isnan().all(), "test setup: rows must stop at different steps"
    assert_same(ref, run(policy, head, backend, mode, eos=[eos]))


@pytest.mark.parametrize("backend", ["hf", "static"])
@pytest.mark.parametrize("k", [1, 3, VOCAB])
@pytest.mark.parametrize("w", [0.0, 2.5])
def test_fused_matches_reference_over_k_and_w(backend, k, w):
    policy, head = policy_and_head("llama-gqa-hd16", seed=3)
    for mode in ("greedy", "stochastic"):
        assert_same(run(policy, head, "reference", mode, k=k, w=w, seed=4),
                    run(policy, head, backend, mode, k=k, w=w, seed=4))


@pytest.mark.parametrize("backend", ["reference", "hf", "static"])
def test_several_heads_mixed(backend):
    """n = 3 heads with preference weights rank by mix . heads: the same as one head of the mixed row."""
    policy, head = policy_and_head("gpt2-hd16", n=3, seed=5)
    mixed = RewardHead(policy, head.mix @ head.linear.weight, (head.mix @ head.linear.bias)[None])
    a, b = run(policy, head, backend, "stochastic", seed=6), run(policy, mixed, backend, "stochastic", seed=6)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.rewards, b.rewards, rtol=0, atol=1e-4)
    hidden = torch.randn(2, 5, policy.config.n_embd)
    assert head.all_rewards(hidden).shape == (2, 5, 3)


def shared_reward_model(policy, seed):
    """A one-label sequence classifier whose backbone IS the policy's (the same module), and an
    equal model with its own copy of the backbone."""
    family = policy.config.model_type
    variant = {"llama": "llama-gqa-hd16", "opt": "opt-hd16", "gpt2": "gpt2-hd16"}[family]
    reward = make_model(variant, "reward", seed, attn="eager", context=64)
    setattr(reward, reward.base_model_prefix, policy.base_model)
    separate = copy.deepcopy(reward)
    return reward, separate


@pytest.mark.parametrize("variant", ENGINE_VARIANTS)
def test_score_model_on_the_policys_backbone_runs_fused_and_matches_the_unfused_path(variant):
    policy, _ = policy_and_head(variant)
    shared, separate = shared_reward_model(policy, seed=7)
    assert shares_backbone(policy, shared) and not shares_backbone(policy, separate)
    for backend in ("hf", "static"):
        fused = args_fast.ARGSDecoder(policy, shared, k=4, w=1.5, backend=backend)
        unfused = args_fast.ARGSDecoder(policy, separate, k=4, w=1.5, backend=backend)
        assert fused.reward_kind == "head" and unfused.reward_kind == "cached"
        assert "fused" in fused.backend_description and "fused" not in unfused.backend_description
        ids, mask = padded_prompts(LENGTHS, seed=8)
        for mode in ("greedy", "stochastic"):
            a = fused.replace(mode=mode).generate(ids, mask, max_new_tokens=STEPS, generator=torch.Generator().manual_seed(1))
            b = unfused.replace(mode=mode).generate(ids, mask, max_new_tokens=STEPS, generator=torch.Generator().manual_seed(1))
            assert_same(a, b)


def test_one_policy_forward_per_token_and_no_second_cache():
    policy, head = policy_and_head("llama-gqa-hd16")
    decoder = args_fast.ARGSDecoder(policy, head, k=4, w=1.5, backend="hf", eos_token_id=[])
    assert isinstance(decoder.engine, HFFusedEngine)
    calls = []
    hook = policy.register_forward_hook(lambda *a: calls.append("policy"))
    backbone_hook = policy.base_model.register_forward_hook(lambda *a: calls.append("backbone"))
    try:
        ids, mask = padded_prompts(LENGTHS)
        decoder.generate(ids, mask, max_new_tokens=STEPS)
    finally:
        hook.remove()
        backbone_hook.remove()
    # prefill: the policy (which runs its backbone); then one backbone pass per step, except the last
    # step, whose next logits nobody reads, still needs its candidates scored: STEPS passes
    assert calls.count("policy") == 1 and calls.count("backbone") == 1 + STEPS
    static = args_fast.ARGSDecoder(policy, head, k=4, w=1.5, backend="static")
    assert isinstance(static.engine, StaticEngine) and static.engine.fused and static.engine.reward is None
    static.generate(ids, mask, max_new_tokens=STEPS)
    assert static.engine.memory_bytes()["reward_kv"] == 0
    assert static.engine.pcache.slots == max(LENGTHS) + STEPS + 4      # prompt + new tokens + k candidate slots


def test_reward_of_a_candidate_is_the_head_on_the_policys_final_hidden_state():
    """The reward reported for each chosen token equals the head on the final hidden state of the
    whole sequence so far, recomputed here by hand for every step."""
    policy, head = policy_and_head("opt-hd16")
    out = run(policy, head, "hf", "stochastic", steps=5)
    ids, mask = padded_prompts(LENGTHS)
    for b in range(len(LENGTHS)):
        prompt = ids[b, mask[b].bool()]
        generated = out.sequences[b, ids.shape[1]:]
        for t in range(generated.shape[0]):
            seq = torch.cat([prompt, generated[:t + 1]])[None]
            want = head(policy.base_model(input_ids=seq).last_hidden_state[0, -1])
            torch.testing.assert_close(out.rewards[b, t], want, rtol=0, atol=1e-4)


def test_head_errors_name_the_argument():
    policy, _ = policy_and_head("gpt2-hd16")
    hidden = policy.config.n_embd
    with pytest.raises(ValueError, match=r"weight must have shape \(n, 32\)"):
        RewardHead(policy, torch.zeros(1, hidden + 1))
    with pytest.raises(ValueError, match="pass mix"):
        RewardHead(policy, torch.zeros(2, hidden))
    with pytest.raises(ValueError, match=r"mix must have shape \(2,\)"):
        RewardHead(policy, torch.zeros(2, hidden), mix=[1.0])
    with pytest.raises(ValueError, match=r"bias must have shape \(1,\)"):
        RewardHead(policy, torch.zeros(hidden), bias=torch.zeros(2))
    with pytest.raises(ValueError, match="weight holds NaN"):
        RewardHead(policy, torch.full((hidden,), float("nan")))
    with pytest.raises(TypeError, match="policy must be a Hugging Face causal LM"):
        RewardHead(torch.nn.Linear(2, 2), torch.zeros(2))
    other, _ = policy_and_head("gpt2-hd16", seed=9)
    ids, mask = padded_prompts([3])
    with pytest.raises(ValueError, match="RewardHead on another model"):
        args_fast.generate(other, RewardHead(policy, torch.zeros(hidden)), ids, mask)


def test_every_backend_builds_for_a_head_and_auto_takes_the_fused_hf_path_on_cpu():
    policy, head = policy_and_head("llama-gqa-hd16")
    decoder = args_fast.ARGSDecoder(policy, head, k=4)
    # auto on CPU: the hf engine, switching to the compiled step only for long requests
    assert decoder.backend == "hf" and isinstance(decoder.engine.eager, HFFusedEngine)
    models = registry.Models(policy, head, "head")
    for name in ("reference", "hf", "static", "static-csrc"):
        if name == "static-csrc" and registry.unavailable_reason(name, models, registry.Options(4, 1.0, 1.0, None, 0)):
            continue
        assert registry.unavailable_reason(name, models, registry.Options(4, 1.0, 1.0, None, 0)) is None
