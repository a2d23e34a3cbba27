"""Normalisation statistics (args_fast/rewards/normalization.py), calibrate, and the arguments of the
rewards: float32 bounds named in the errors, no statistics leaking between models sharing a config,
calibrate measuring the raw reward, and bad arguments refused before any work."""
import copy
import functools
import math

import pytest
import torch
from transformers import LlamaForSequenceClassification

import args_fast
from args_fast import ImplicitReward, NormalizedReward, RewardHead, TokenReward, calibrate, store_normalization
from args_fast.rewards.normalization import CONFIG_KEY, normalization_of
from tiny_models import make_config, make_policy, make_reward, padded_prompts

GEN = dict(eos_token_id=[], pad_token_id=0)


@functools.lru_cache(maxsize=None)
def models():
    policy = make_policy("llama", 11, peaked="weights")
    reward = make_reward("llama", 12)
    return policy, reward


def head(policy, **kw):
    return RewardHead(policy, torch.randn(1, policy.config.hidden_size, generator=torch.Generator().manual_seed(0)),
                      **kw)


# ------------------------------------------------------------------ bounds of the statistics
@pytest.mark.parametrize("mean, std, match", [
    (0.0, 1e-31, r"std must be >= \(1e8 \+ \|mean\|\) / 1e38 = 1e-30 with mean=0, got 1e-31: .*past float32"),
    (1e30, 1e-9, r"std must be >= .* = 1e-08 with mean=1e\+30"),
    (0.0, 1e29, r"std must be a finite number in \(0, 1e\+28\]"),
    (2e30, 1.0, r"mean must be a finite number in \[-1e\+30, 1e\+30\]"),
    (0.0, 0.0, r"std must be a finite number in \(0, 1e\+28\]"),
    (0.0, -1.0, r"std must be a finite number"),
    (float("nan"), 1.0, r"mean must be a finite number"),
    (0.0, float("inf"), r"std must be a finite number"),
    (True, 1.0, r"mean must be a number"),
    ("0", 1.0, r"mean must be a number"),
])
def test_statistics_that_float32_cannot_carry_are_refused(mean, std, match):
    policy, reward = models()
    with pytest.raises(ValueError, match=match):
        NormalizedReward(reward, mean, std)
    with pytest.raises(ValueError, match=match):
        store_normalization(copy.deepcopy(reward), mean, std)
    stored = copy.deepcopy(reward)
    setattr(stored.config, CONFIG_KEY, {"mean": mean, "std": std})   # e.g. a hand-edited config.json
    with pytest.raises(ValueError, match=f"config.{CONFIG_KEY}: " + match):
        args_fast.ARGSDecoder(policy, stored, k=2)


def test_the_bounds_keep_scores_finite():
    """At the bounds the normalised reward of a reward of 1e8 is finite in float32."""
    policy, reward = models()
    for mean, std in ((0.0, 1e-30), (-1e30, 1e-8 + 1e-16), (1e30, 1e28)):
        n = NormalizedReward(reward, mean, std)
        assert math.isfinite(float(torch.tensor((1e8 - n.mean) / n.std, dtype=torch.float32)))


def test_the_weight_on_the_raw_reward_is_bounded_as_w():
    policy, _ = models()
    with pytest.raises(ValueError, match=r"w / std = 1e\+10 / 1e-25 = 1e\+35 is the weight on the raw reward"):
        args_fast.ARGSDecoder(policy, NormalizedReward(head(policy), 0.0, 1e-25), k=2, w=1e10)
    with pytest.raises(ValueError, match=r"w\[1\] / std"):
        args_fast.ARGSDecoder(policy, [head(policy), NormalizedReward(head(policy), 0.0, 1e-25)], k=2, w=[1.0, 1e6])
    args_fast.ARGSDecoder(policy, NormalizedReward(head(policy), 0.0, 1e-25), k=2, w=1e5)   # 1e30: accepted


# ------------------------------------------------------------------ wrappers and shared objects
def test_normalized_reward_of_zero_and_one_is_the_reward():
    policy, reward = models()
    ids, mask = padded_prompts([3, 4], seed=2)
    for r in (reward, head(policy, mix=[0.5])):
        plain = args_fast.generate(policy, r, ids, mask, k=3, w=2.0, max_new_tokens=4, **GEN)
        wrapped = args_fast.generate(policy, NormalizedReward(r, 0.0, 1.0), ids, mask, k=3, w=2.0, max_new_tokens=4,
                                     **GEN)
        assert torch.equal(plain.sequences, wrapped.sequences)
        torch.testing.assert_close(plain.rewards, wrapped.rewards, rtol=0, atol=1e-6)


def test_normalized_reward_arguments():
    policy, reward = models()
    for bad, match in ((None, "got NoneType"), (3.0, "got float"), ("rm", "got str"),
                       ([reward], "reward is a list: normalise each reward"),
                       (NormalizedReward(reward, 0.0, 1.0), "already a NormalizedReward")):
        with pytest.raises(TypeError, match=match):
            NormalizedReward(bad, 0.0, 1.0)
    n = NormalizedReward(reward, torch.tensor(0.5), 2)   # one-element tensors and ints are numbers
    assert (n.mean, n.std) == (0.5, 2.0)
    with pytest.raises(AttributeError):   # read-only: statistics changed afterwards would skip the checks
        n.std = 0.0


def test_statistics_do_not_leak_between_models_sharing_a_config():
    config = make_config("llama", num_labels=1)
    a, b = LlamaForSequenceClassification(config), LlamaForSequenceClassification(config)
    assert a.config is b.config   # Hugging Face models built from one config object share it
    store_normalization(a, 1.0, 2.0)
    assert normalization_of(a)[1:] == (1.0, 2.0)
    assert normalization_of(b)[1:] == (0.0, 1.0) and not hasattr(config, CONFIG_KEY)
    store_normalization(b, 3.0, 4.0)
    assert normalization_of(a)[1:] == (1.0, 2.0) and normalization_of(b)[1:] == (3.0, 4.0)


def test_store_normalization_wants_a_hugging_face_model():
    policy, reward = models()
    with pytest.raises(TypeError, match="model must be a Hugging Face model .* got RewardHead"):
        store_normalization(head(policy), 0.0, 1.0)
    with pytest.raises(TypeError, match="model is a NormalizedReward: pass the Hugging Face model it wraps"):
        store_normalization(NormalizedReward(reward, 0.0, 1.0), 0.0, 1.0)


# ------------------------------------------------------------------ calibrate
def test_calibrate_measures_the_raw_reward_whatever_statistics_it_carries():
    policy, reward = models()
    ids, mask = padded_prompts([3, 5, 2, 4], seed=3)
    kw = dict(max_new_tokens=4, batch_size=3, **GEN)
    raw = calibrate(policy, reward, ids, mask, **kw)
    stored = copy.deepcopy(reward)
    store_normalization(stored, 5.0, 0.25)
    for given in (stored, NormalizedReward(reward, -7.0, 3.0), NormalizedReward(stored, 2.0, 9.0)):
        again = calibrate(policy, given, ids, mask, **kw)
        assert (again.mean, again.std) == pytest.approx((raw.mean, raw.std), abs=1e-6)
        assert again.reward is normalization_of(given)[0]
    # what it returns normalises the raw reward by what it measured, stored statistics or not
    out = args_fast.generate(policy, calibrate(policy, stored, ids, mask, **kw), ids, mask, k=1, w=0.0,
                             max_new_tokens=4, **GEN)
    finals = out.rewards[:, -1]
    assert float(finals.mean()) == pytest.approx(0.0, abs=1e-5) and float(finals.std()) == pytest.approx(1.0, abs=1e-5)


def test_calibrate_arguments_are_checked_before_decoding():
    policy, reward = models()
    ids, mask = padded_prompts([3, 5], seed=3)
    with pytest.raises(TypeError, match="calibrate measures one reward"):
        calibrate(policy, [reward, reward], ids, mask)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        calibrate(policy, reward, ids, mask, batch_size=0)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int >= 1, got 0"):
        calibrate(policy, reward, ids, mask, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"at least 2 calibration prompts .* got \(1, 5\)"):
        calibrate(policy, reward, ids[1:], mask[1:])
    with pytest.raises(ValueError, match=r"at least 2 calibration prompts .* got list"):
        calibrate(policy, reward, [[3, 4]], mask)
    n = calibrate(policy, reward, ids[:, -3:], None, max_new_tokens=3, **GEN)   # no mask: every token is real
    assert n.std > 0


def test_calibrate_refuses_statistics_float32_cannot_carry():
    policy, _ = models()
    ids, mask = padded_prompts([3, 5, 4], seed=3)
    tiny = RewardHead(policy, torch.full((1, policy.config.hidden_size), 1e-36))   # rewards of about 1e-36
    with pytest.raises(ValueError, match=r"the measured statistics .* cannot normalise this reward in float32: std"):
        calibrate(policy, tiny, ids, mask, max_new_tokens=3, **GEN)


# ------------------------------------------------------------------ RewardHead, ImplicitReward, TokenReward
def test_reward_head_arguments():
    policy, reward = models()
    hidden = policy.config.hidden_size
    with pytest.raises(TypeError, match="policy must be a Hugging Face causal LM"):
        RewardHead(reward, torch.ones(hidden))   # a score model has no LM head
    with pytest.raises(TypeError, match=r"weight must hold real numbers, got a torch.bool tensor"):
        RewardHead(policy, torch.ones(hidden, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"weight holds values up to 100000, past the policy's dtype torch.float16"):
        RewardHead(copy.deepcopy(policy).half(), torch.full((hidden,), 1e5))
    with pytest.raises(ValueError, match=r"weight holds values up to 1e\+39, past the policy's dtype torch.float32"):
        RewardHead(policy, torch.full((hidden,), 1e39, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"bias holds values up to"):
        RewardHead(copy.deepcopy(policy).half(), torch.ones(hidden), torch.tensor([7e4]))
    with pytest.raises(ValueError, match=r"mix must hold weights in \[-1e\+30, 1e\+30\]"):
        RewardHead(policy, torch.ones(2, hidden), mix=[1e31, 0.0])
    with pytest.raises(ValueError, match="mix holds NaN"):
        RewardHead(policy, torch.ones(2, hidden), mix=[float("nan"), 0.0])
    assert RewardHead(policy, torch.zeros(hidden), mix=[0.0]).mix.tolist() == [0.0]   # zeros: a reward of 0


def test_a_reward_head_keeps_its_own_copy_of_mix():
    policy, _ = models()
    mix = torch.tensor([0.5, -1.0])
    h = RewardHead(policy, torch.ones(2, policy.config.hidden_size), mix=mix)
    mix.mul_(100)   # the caller reuses its tensor
    assert h.mix.tolist() == [0.5, -1.0]


def test_vocabulary_reward_arguments():
    policy, reward = models()
    reference = make_policy("llama", 13)
    for beta in (float("nan"), float("inf"), True, "1", 2e30):
        with pytest.raises(ValueError, match="beta must be a"):
            ImplicitReward(policy, reference, beta)
    with pytest.raises(TypeError, match=r"reference_lm must be a Hugging Face causal LM \(\*ForCausalLM\), got Llama"):
        ImplicitReward(policy, reward, 0.1)
    with pytest.raises(ValueError, match="the same model"):
        ImplicitReward(policy, policy, 0.1)
    for scale in (float("nan"), 2e30, None):
        with pytest.raises(ValueError, match="scale must be a"):
            TokenReward(reference, scale=scale)
    with pytest.raises(TypeError, match=r"source must be a Hugging Face causal LM \(\*ForCausalLM\), got LlamaForSeq"):
        TokenReward(reward)
    with pytest.raises(TypeError, match="cumulative must be True or False"):
        TokenReward(reference, cumulative=1)
