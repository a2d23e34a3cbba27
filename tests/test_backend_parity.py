"""The `torch` backend against the `reference` oracle: same tokens, rewards within 1e-4."""
import zlib

import pytest
import torch

import args_fast
from tiny_models import FAMILIES, VOCAB, make_policy, make_reward, padded_prompts


def run(policy, reward, ids, mask, backend, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return args_fast.generate(policy, reward, ids, mask, backend=backend, generator=g, **kw)


def assert_same(a, b):
    assert torch.equal(a.sequences, b.sequences), (a.sequences, b.sequences)
    assert a.rewards.shape == b.rewards.shape
    assert torch.equal(a.rewards.isnan(), b.rewards.isnan())
    torch.testing.assert_close(a.rewards.nan_to_num(), b.rewards.nan_to_num(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("k", [1, 4, 10, VOCAB - 1, VOCAB])
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_torch_matches_reference(family, k, mode):
    seed = zlib.crc32(f"{family}{k}{mode}".encode()) % 1000
    policy, reward = make_policy(family, seed), make_reward(family, seed + 1)
    ids, mask = padded_prompts([7, 3, 12, 1], seed=seed)
    for w in (0.0, 0.5, 2.5):
        kw = dict(k=k, w=w, mode=mode, temperature=0.7, max_new_tokens=10, eos_token_id=None)
        assert_same(run(policy, reward, ids, mask, "reference", seed, **kw),
                    run(policy, reward, ids, mask, "hf", seed, **kw))


def _eos_with_staggered_stops(policy, reward, ids, mask, **kw):
    """A token that the unbounded run emits at different first steps in different rows."""
    free = run(policy, reward, ids, mask, "hf", **kw).sequences[:, ids.shape[1]:]
    best, best_spread = None, 0
    for token in free.unique().tolist():
        first = [(row == token).nonzero()[0].item() if (row == token).any() else None for row in free]
        spread = len({f for f in first})
        if spread > best_spread:
            best, best_spread = token, spread
    return best, best_spread


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_rows_stop_at_eos_independently(family, mode):
    policy, reward = make_policy(family, 3), make_reward(family, 4)
    ids, mask = padded_prompts([5, 9, 2, 6, 4], seed=5)
    kw = dict(k=6, w=1.5, mode=mode, max_new_tokens=14)
    eos, spread = _eos_with_staggered_stops(policy, reward, ids, mask, eos_token_id=None, **kw)
    assert spread >= 2, "test setup: need rows that stop at different steps"
    kw.update(eos_token_id=eos, pad_token_id=0)
    ref = run(policy, reward, ids, mask, "reference", **kw)
    fast = run(policy, reward, ids, mask, "hf", **kw)
    assert_same(ref, fast)
    gen = fast.sequences[:, ids.shape[1]:]
    for row, rewards in zip(gen, fast.rewards):
        hits = (row == eos).nonzero()
        if len(hits):  # after a row's EOS: pad tokens and nan rewards
            stop = hits[0].item()
            assert (row[stop + 1:] == 0).all() and rewards[stop + 1:].isnan().all()
            assert not rewards[:stop + 1].isnan().any()


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_rows_equal_running_alone(family):
    policy, reward = make_policy(family, 7), make_reward(family, 8)
    ids, mask = padded_prompts([6, 2, 11], seed=9)
    kw = dict(k=5, w=1.0, max_new_tokens=8, eos_token_id=None)
    batched = run(policy, reward, ids, mask, "hf", **kw)
    for b in range(ids.shape[0]):
        alone_ids = ids[b, mask[b].bool()][None]
        alone = run(policy, reward, alone_ids, None, "hf", **kw)
        assert torch.equal(alone.sequences[0, alone_ids.shape[1]:], batched.sequences[b, ids.shape[1]:])
        torch.testing.assert_close(alone.rewards[0], batched.rewards[b], rtol=0, atol=1e-4)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_implementations(attn):
    policy, reward = make_policy("llama", 11, attn=attn), make_reward("llama", 12, attn=attn)
    ids, mask = padded_prompts([4, 8], seed=13)
    kw = dict(k=4, w=2.0, mode="stochastic", max_new_tokens=6, eos_token_id=None)
    assert_same(run(policy, reward, ids, mask, "reference", **kw), run(policy, reward, ids, mask, "hf", **kw))


def test_reference_reward_is_sequence_classification_score():
    """The reward is what the *ForSequenceClassification model gives for the unpadded sequence."""
    reward = make_reward("llama", 21)
    from args_fast.engine.backends.reference import ReferenceReward
    ids, mask = padded_prompts([5], seed=22)
    cands = torch.tensor([[7, 8, 9]])
    ref = ReferenceReward(reward)
    ref.prefill(ids, mask, 0)
    got = ref.score(cands)
    for j in range(3):
        seq = torch.cat([ids[0], cands[0, j:j + 1]])[None]
        want = reward(input_ids=seq).logits[0, 0]
        torch.testing.assert_close(got[0, j], want, rtol=0, atol=1e-5)
