"""args_fast.rewards.kinds: which kind a reward is, decided once before any engine is built."""
import pytest
import torch

import args_fast
from args_fast.rewards import kinds
from args_fast.rewards.head import RewardHead
from tiny_models import make_policy, make_reward


@pytest.fixture(scope="module")
def policy():
    return make_policy("llama", 81)


@pytest.fixture(scope="module")
def reward():
    return make_reward("llama", 82)


def shared_reward(policy):
    """A score model whose backbone is the policy's own tensors."""
    rm = make_reward("llama", 83)
    rm.model = policy.model
    return rm


def test_a_separate_score_model_is_cached(policy, reward):
    spec = kinds.classify(policy, reward, 2.0)
    assert (spec.kind, spec.engine_reward, spec.w, spec.engine_w, spec.multi) == ("cached", reward, 2.0, 2.0, False)
    assert [name for name, _ in kinds.token_models(policy, spec, reward)] == ["policy", "reward_model"]


def test_a_head_and_a_shared_backbone_are_heads(policy):
    head = RewardHead(policy, torch.randn(policy.config.hidden_size))
    assert kinds.classify(policy, head, 1.0).kind == "head"
    spec = kinds.classify(policy, shared_reward(policy), 1.0)
    assert spec.kind == "head" and isinstance(spec.engine_reward, RewardHead)


def test_a_head_on_another_policy_is_refused(policy):
    other = make_policy("llama", 84)
    with pytest.raises(ValueError, match="RewardHead on another model than this policy"):
        kinds.classify(policy, RewardHead(other, torch.randn(other.config.hidden_size)), 1.0)


def test_vocabulary_rewards_are_vocab(policy):
    reference = make_policy("llama", 85)
    assert kinds.classify(policy, args_fast.ImplicitReward(policy, reference, 0.5), 1.0).kind == "vocab"


def test_a_callable_is_text_and_needs_the_tokenizer(policy):
    def fn(prompts, responses):
        return [0.0] * len(prompts)
    with pytest.raises(ValueError, match="tokenizer .* is required when reward_model is a text callable"):
        kinds.classify(policy, fn, 1.0)
    assert kinds.classify(policy, fn, 1.0, tokenizer=object()).kind == "text"


def test_several_heads_combine_into_one_head(policy):
    heads = [RewardHead(policy, torch.randn(policy.config.hidden_size)) for _ in range(2)]
    spec = kinds.classify(policy, heads, [0.3, 0.7])
    assert (spec.kind, spec.w, spec.engine_w, spec.n_objectives, spec.multi) == ("head", [0.3, 0.7], 1.0, 2, True)
    assert spec.engine_reward.n == 2 and spec.engine_reward.mix.tolist() == pytest.approx([0.3, 0.7])


def test_mixed_kinds_are_multi(policy, reward):
    head = RewardHead(policy, torch.randn(policy.config.hidden_size))
    spec = kinds.classify(policy, [head, reward], [1.0, 2.0])
    assert spec.kind == "multi" and [o.kind for o in spec.engine_reward.objectives] == ["head", "cached"]
    assert [name for name, _ in kinds.token_models(policy, spec, [head, reward])] == ["policy", "reward_model[1]"]


def test_one_normalised_reward_is_several_rewards_of_one(policy, reward):
    spec = kinds.classify(policy, args_fast.NormalizedReward(reward, 1.0, 2.0), 3.0)
    assert (spec.kind, spec.w, spec.engine_w, spec.n_objectives) == ("multi", 3.0, 1.0, 1)
    objective = spec.engine_reward.objectives[0]
    assert (objective.mean, objective.std, objective.model) == (1.0, 2.0, reward)


@pytest.mark.parametrize("w, match", [(1.0, "w must be a list of 2 weights"), ([1.0], "w must be a list of 2"),
                                      ([1.0, float("nan")], r"w\[1\] must be")])
def test_weights_of_several_rewards(policy, reward, w, match):
    with pytest.raises(ValueError, match=match):
        kinds.classify(policy, [reward, reward], w)


def test_an_empty_list_and_a_nested_list_are_refused(policy, reward):
    with pytest.raises(ValueError, match="empty list"):
        kinds.classify(policy, [], [])
    with pytest.raises(TypeError, match=r"reward_model\[0\] is a list"):
        kinds.classify(policy, [[reward]], [1.0])


def test_describe_says_how_the_reward_is_computed(policy, reward):
    spec = kinds.classify(policy, reward, 1.0)
    assert "separate reward model" in kinds.describe(spec, reward, policy, "hf")
    spec = kinds.classify(policy, shared_reward(policy), 1.0)
    assert kinds.describe(spec, None, policy, "hf").startswith("fused:")
    assert "literal way" in kinds.describe(spec, None, policy, "reference")
