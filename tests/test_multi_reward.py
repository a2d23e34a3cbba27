"""Several rewards at once (args_fast/rewards/kinds.py): score = logit + sum_i w_i * (r_i - mean_i) / std_i.

Every backend against the reference (tokens identical, each objective's reward within 1e-4, padded
batches, rows stopping at different steps, greedy and stochastic), and the linear identities: one
non-zero weight is single-reward ARGS; two heads with weights a, b are one head a*s_1 + b*s_2; a
normalised reward is the reward with its head (or weight) rescaled."""
import copy
import functools
import os

import pytest
import torch

import args_fast
from args_fast import NormalizedReward, RewardHead, TokenReward, calibrate, store_normalization
from args_fast.engine import csrc_ops
from tiny_models import (ENGINE_VARIANTS, make_model, padded_prompts, PARITY_LENGTHS as LENGTHS,
                         assert_same_output as assert_same, generate_padded as run, most_staggered_eos)

HEAD_BACKENDS = (("hf", "static") + (("static-csrc",) if csrc_ops.available() else ())
                 + (("static-triton",) if os.environ.get("TRITON_INTERPRET") == "1" else ()))


@functools.lru_cache(maxsize=None)
def models(variant="llama-gqa-hd16", seed=0):
    """A peaked policy, three heads on it, a score model on its own backbone (shared), a separate score
    model, and a token-reward LM."""
    policy = make_model(variant, "lm", seed, peaked="weights", attn="eager", context=64)
    hidden = policy.get_output_embeddings().in_features
    g = torch.Generator().manual_seed(seed + 100)
    heads = [RewardHead(policy, torch.randn(1, hidden, generator=g) * 2.0, torch.randn(1, generator=g))
             for _ in range(3)]
    shared = make_model(variant, "reward", seed + 1, attn="eager", context=64)
    setattr(shared, shared.base_model_prefix, policy.base_model)
    separate = make_model(variant, "reward", seed + 2, attn="eager", context=64)
    lm = make_model(variant, "lm", seed + 3, peaked="weights", attn="eager", context=64)
    return policy, heads, shared, separate, lm


def text_reward(prompts, responses):
    """A deterministic text reward: a function of the response's characters."""
    return [float(sum(map(ord, r)) % 97) / 40.0 - 1.0 for r in responses]


def char_tokenizer():
    from tiny_models import make_chat_tokenizer
    return make_chat_tokenizer()


@pytest.mark.parametrize("backend", HEAD_BACKENDS)
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
@pytest.mark.parametrize("variant", ENGINE_VARIANTS)
def test_heads_run_fused_on_every_backend_and_match_the_reference(variant, mode, backend):
    policy, heads, shared, *_ = models(variant)
    rewards = [heads[0], NormalizedReward(heads[1], 0.3, 2.5), shared]
    w = [1.2, -0.7, 0.9]
    eos = most_staggered_eos(run(policy, rewards, "hf", mode, w=w).sequences[:, max(LENGTHS):])
    ref = run(policy, rewards, "reference", mode, w=w, eos=[eos])
    assert ref.rewards.shape[-1] == 3 and ref.rewards.isnan().any() and not ref.rewards.isnan().all()
    got = run(policy, rewards, backend, mode, w=w, eos=[eos])
    assert_same(ref, got)
    decoder = args_fast.ARGSDecoder(policy, rewards, k=4, w=w, backend=backend)
    assert decoder.reward_kind == "head" and "fused: 3 reward head(s)" in decoder.backend_description


@pytest.mark.parametrize("backend", ["hf"])
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_rewards_of_every_kind_mixed_match_the_reference(mode, backend):
    policy, heads, shared, separate, lm = models("llama-gqa-hd16", seed=1)
    tok = char_tokenizer()
    rewards = [shared, NormalizedReward(separate, -0.2, 0.5), TokenReward(lm, scale=0.5, cumulative=True),
               text_reward]
    w = [1.0, 0.6, 0.8, 0.5]
    ids, mask = padded_prompts(LENGTHS, seed=2)
    kw = dict(k=4, w=w, mode=mode, max_new_tokens=6, eos_token_id=[], pad_token_id=0, tokenizer=tok)
    ref = args_fast.generate(policy, rewards, ids, mask, backend="reference", generator=torch.Generator().manual_seed(3),
                             **kw)
    got = args_fast.generate(policy, rewards, ids, mask, backend=backend, generator=torch.Generator().manual_seed(3),
                             **kw)
    assert ref.rewards.shape == (len(LENGTHS), 6, 4)
    assert_same(ref, got)
    decoder = args_fast.ARGSDecoder(policy, rewards, k=4, w=w, tokenizer=tok)
    assert decoder.backend == "hf" and decoder.reward_kind == "multi"
    assert "4 rewards mixed by w = [1.0, 0.6, 0.8, 0.5]" in decoder.backend_description
    with pytest.raises(ValueError, match="backend='static' cannot run these models: several rewards run fused"):
        args_fast.ARGSDecoder(policy, rewards, k=4, w=w, tokenizer=tok, backend="static")


@pytest.mark.parametrize("backend", ["reference", "hf", "static"])
def test_one_nonzero_weight_is_single_reward_args(backend):
    policy, heads, shared, separate, _ = models("opt-hd16", seed=2)
    for mode in ("greedy", "stochastic"):
        single = run(policy, heads[0], backend, mode, w=1.7, seed=5)
        multi = run(policy, [heads[0], heads[1], heads[2]], backend, mode, w=[1.7, 0.0, 0.0], seed=5)
        assert torch.equal(single.sequences, multi.sequences)
        torch.testing.assert_close(multi.rewards[..., 0], single.rewards, rtol=0, atol=1e-4, equal_nan=True)
        if backend != "static":   # separate score models: hf and reference
            single = run(policy, separate, backend, mode, w=1.7, seed=5)
            multi = run(policy, [separate, shared], backend, mode, w=[1.7, 0.0], seed=5)
            assert torch.equal(single.sequences, multi.sequences)
            torch.testing.assert_close(multi.rewards[..., 0], single.rewards, rtol=0, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("backend", ["reference", "hf", "static"])
def test_two_heads_weighted_equal_one_head_of_the_weighted_rows(backend):
    policy, heads, *_ = models("gpt2-hd16", seed=3)
    a, b = 0.8, -1.3
    one = RewardHead(policy, a * heads[0].linear.weight + b * heads[1].linear.weight,
                     a * heads[0].linear.bias + b * heads[1].linear.bias)
    for mode in ("greedy", "stochastic"):
        two = run(policy, [heads[0], heads[1]], backend, mode, w=[a, b], seed=6)
        single = run(policy, one, backend, mode, w=1.0, seed=6)
        assert torch.equal(two.sequences, single.sequences)
        torch.testing.assert_close(a * two.rewards[..., 0] + b * two.rewards[..., 1], single.rewards, rtol=0,
                                   atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "hf", "static"])
def test_a_normalised_reward_is_the_rescaled_reward(backend):
    policy, heads, *_ = models("llama-gqa-hd16", seed=4)
    mean, std = 0.4, 2.0
    rescaled = RewardHead(policy, heads[0].linear.weight / std, (heads[0].linear.bias - mean) / std)
    for mode in ("greedy", "stochastic"):
        normalised = run(policy, NormalizedReward(heads[0], mean, std), backend, mode, w=1.3, seed=7)
        assert normalised.rewards.dim() == 2    # one reward: (B, T), its normalised value
        assert_same(run(policy, rescaled, backend, mode, w=1.3, seed=7), normalised)


def test_normalisation_stored_in_a_saved_reward_model(tmp_path):
    policy, _, _, separate, _ = models("llama-gqa-hd16", seed=5)
    model = copy.deepcopy(separate)
    store_normalization(model, 0.25, 3.0)
    model.save_pretrained(tmp_path / "rm")
    loaded = type(model).from_pretrained(tmp_path / "rm").eval()
    decoder = args_fast.ARGSDecoder(policy, loaded, k=4, w=1.0)
    assert decoder.multi and decoder.w == 1.0
    a = run(policy, loaded, "hf", "stochastic", seed=8)
    b = run(policy, NormalizedReward(separate, 0.25, 3.0), "hf", "stochastic", seed=8)
    assert_same(a, b)
    with pytest.raises(ValueError, match="std must be a finite number in"):
        store_normalization(model, 0.0, 0.0)


def test_calibrate_measures_the_mean_and_std_of_greedy_replies():
    policy, heads, *_ = models("opt-hd16", seed=6)
    ids, mask = padded_prompts([3, 5, 2, 6, 4], seed=9)
    normalised = calibrate(policy, heads[0], ids, mask, max_new_tokens=5, eos_token_id=[], pad_token_id=0,
                           batch_size=2)
    out = args_fast.generate(policy, heads[0], ids, mask, k=1, w=0.0, max_new_tokens=5, eos_token_id=[], pad_token_id=0)
    finals = out.rewards[:, -1]
    assert normalised.reward is heads[0]
    assert normalised.mean == pytest.approx(float(finals.mean()), abs=1e-5)
    assert normalised.std == pytest.approx(float(finals.std()), abs=1e-5)
    again = run(policy, [normalised], "hf", "greedy", w=[1.0], steps=5, lengths=[3, 5, 2, 6, 4], seed=9)
    assert again.rewards.shape == (5, 5)   # n = 1: (B, T), as with one reward


def test_errors_name_the_argument():
    policy, heads, shared, separate, lm = models("llama-gqa-hd16", seed=0)
    ids, mask = padded_prompts([3])
    with pytest.raises(ValueError, match=r"w must be a list of 2 weights, one per reward in reward_model, got 1.0"):
        args_fast.ARGSDecoder(policy, [heads[0], heads[1]], w=1.0)
    with pytest.raises(ValueError, match=r"w must be a list of 2 weights"):
        args_fast.ARGSDecoder(policy, [heads[0], heads[1]], w=[1.0])
    with pytest.raises(ValueError, match=r"w\[1\] must be a finite number"):
        args_fast.ARGSDecoder(policy, [heads[0], heads[1]], w=[1.0, float("nan")])
    with pytest.raises(ValueError, match="reward_model is an empty list"):
        args_fast.ARGSDecoder(policy, [], w=[])
    with pytest.raises(TypeError, match=r"reward_model\[1\] is a list"):
        args_fast.ARGSDecoder(policy, [heads[0], [heads[1]]], w=[1.0, 1.0])
    with pytest.raises(TypeError, match=r"reward_model\[1\]: reward_model must be a \*ForSequenceClassification"):
        args_fast.ARGSDecoder(policy, [heads[0], 3], w=[1.0, 1.0])
    with pytest.raises(ValueError, match="reward_tokenizer with several rewards"):
        args_fast.ARGSDecoder(policy, [separate, shared], w=[1.0, 1.0], reward_tokenizer=char_tokenizer(),
                              tokenizer=char_tokenizer())
    with pytest.raises(ValueError, match=r"std must be a finite number in \(0, 1e\+28\]"):
        NormalizedReward(heads[0], 0.0, -1.0)
    with pytest.raises(TypeError, match="already a NormalizedReward"):
        NormalizedReward(NormalizedReward(heads[0], 0.0, 1.0), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"reward_model\[0\]: reward_model is a RewardHead on another model"):
        other = make_model("llama-gqa-hd16", "lm", 9)
        args_fast.ARGSDecoder(policy, [RewardHead(other, torch.ones(1, other.config.hidden_size)), heads[0]],
                              w=[1.0, 1.0])
