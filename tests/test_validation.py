"""Bad input gets a clear error naming the argument, before any work is done."""
import math

import pytest
import torch

import args_fast
from tiny_models import VOCAB, make_model, make_policy, make_reward, padded_prompts


@pytest.fixture(scope="module")
def models():
    return make_policy("llama", 71, context=64), make_reward("llama", 72, context=64)


@pytest.fixture
def prompt():
    return padded_prompts([4, 6], seed=73)


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=0), "k must be"), (dict(k=VOCAB + 1), "k must be"), (dict(k=2.5), "k must be"),
    (dict(w=math.inf), "w must be"), (dict(w=math.nan), "w must be"), (dict(w="1"), "w must be"),
    (dict(mode="beam"), "mode must be"), (dict(backend="jax"), "backend must be"),
    (dict(mode="stochastic", temperature=0.0), "temperature must be"),
    (dict(mode="stochastic", temperature=-1.0), "temperature must be"),
    (dict(mode="stochastic", temperature=math.inf), "temperature must be"),
    (dict(max_new_tokens=-1), "max_new_tokens must be"),
    (dict(max_new_tokens=60), "exceeds the policy's context of 64"),
    (dict(eos_token_id=VOCAB), "eos_token_id must be"), (dict(pad_token_id=-2), "pad_token_id must be"),
])
def test_bad_options(models, prompt, kwargs, match):
    ids, mask = prompt
    with pytest.raises(ValueError, match=match):
        args_fast.generate(*models, ids, mask, **{"max_new_tokens": 4, **kwargs})


def test_greedy_ignores_temperature(models, prompt):
    args_fast.generate(*models, *prompt, temperature=0.0, max_new_tokens=2)


def test_bad_prompts(models):
    policy, reward = models
    with pytest.raises(ValueError, match="input_ids is empty"):
        args_fast.generate(policy, reward, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty prompt"):
        args_fast.generate(policy, reward, torch.ones(2, 3, dtype=torch.long),
                           torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="left-padded"):
        args_fast.generate(policy, reward, torch.ones(1, 3, dtype=torch.long), torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="input_ids must be token ids"):
        args_fast.generate(policy, reward, torch.tensor([[3, VOCAB]]))
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        args_fast.generate(policy, reward, torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        args_fast.generate(policy, reward, torch.ones(1, 3, dtype=torch.long), torch.ones(1, 4))


def test_bad_reward_models(models, prompt):
    policy, _ = models
    with pytest.raises(TypeError, match="scalar score head"):
        args_fast.generate(policy, make_reward("llama", 74, num_labels=2), *prompt)
    with pytest.raises(TypeError, match="no `score` head"):
        args_fast.generate(policy, make_policy("llama", 75), *prompt)
    with pytest.raises(TypeError, match="reward_model must be"):
        args_fast.generate(policy, 3.0, *prompt)
    other = make_model("llama-mini", "reward", 78, vocab=VOCAB + 5)   # another vocabulary than the policy's
    with pytest.raises(ValueError, match="vocabulary"):
        args_fast.generate(policy, other, *prompt)
    with pytest.raises(ValueError, match="tokenizer"):
        args_fast.generate(policy, lambda p, r: [0.0] * len(p), *prompt)


def test_reward_model_context_is_checked(prompt):
    policy, reward = make_policy("llama", 76, context=128), make_reward("llama", 77, context=16)
    with pytest.raises(ValueError, match="reward_model's context of 16"):
        args_fast.generate(policy, reward, *prompt, max_new_tokens=12)


def test_zero_new_tokens(models, prompt):
    out = args_fast.generate(*models, *prompt, max_new_tokens=0)
    assert torch.equal(out.sequences, prompt[0]) and out.rewards.shape == (2, 0)
