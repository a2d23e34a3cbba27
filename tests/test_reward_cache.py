"""The hf backend keeps each row's prefix once in the reward cache and calls the reward model once per step."""
import pytest
import torch

import args_fast
from tiny_models import FAMILIES, make_policy, make_reward, padded_prompts


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("k", [1, 7])
def test_prefix_once_and_one_call_per_step(family, k):
    policy, reward = make_policy(family, 61), make_reward(family, 62)
    ids, mask = padded_prompts([9, 4, 6], seed=63)
    calls = []
    hook = reward.base_model.register_forward_hook(lambda mod, args, kwargs_out: calls.append(1))
    decoder = args_fast.ARGSDecoder(policy, reward, k=k, w=1.0, max_new_tokens=10, eos_token_id=None,
                                    backend="hf")
    try:
        out = decoder.generate(ids, mask)
    finally:
        hook.remove()
    steps = out.rewards.shape[1]
    assert steps == 10
    # one prefill call, then exactly one candidate call per generated token
    assert len(calls) == 1 + steps
    cache = decoder.engine.reward.cache.storage
    layers = reward.config.num_hidden_layers
    batch, prompt = ids.shape
    assert cache.keys.shape[:4] == (layers, batch, cache.keys.shape[2], prompt + 10 + k)
    heads, dim = cache.keys.shape[2], cache.keys.shape[4]
    # prefix (prompt + generated) once, plus k candidate slots: never k copies of the prefix
    assert cache.nbytes() == 2 * layers * batch * heads * (prompt + 10 + k) * dim * cache.keys.element_size()
    # the cache holds exactly the prefix the winner-only commits built: equal to re-encoding the final text
    seq, m = out.sequences[:, :-1], torch.cat([mask, torch.ones(batch, steps - 1, dtype=torch.long)], 1)
    from args_fast.engine.backends.hf_runners import HFRewardRunner
    fresh = HFRewardRunner(reward, 0)
    fresh.prefill(seq, m, 0)
    n = seq.shape[1]
    real = m.bool()[:, None, :, None].expand(-1, heads, -1, dim)
    for layer in range(layers):
        got = cache.keys[layer, :, :, :n]
        want = fresh.cache.storage.keys[layer, :, :, :n]
        torch.testing.assert_close(got[real.expand_as(got)], want[real.expand_as(want)], rtol=0, atol=1e-5)


def test_slot_cache_is_freed_without_the_cyclic_gc():
    """The cache must be released as soon as its last user drops it (no owner <-> layer cycle): on a
    GPU it can be tens of GB, and a benchmark that builds a new one per run would otherwise OOM."""
    import gc
    import weakref

    from args_fast.engine.kv_cache import HFSlotCache

    gc.collect()
    gc.disable()
    try:
        cache = HFSlotCache(num_layers=2, batch_size=1, max_slots=8)
        cache.layers[1].update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
        assert cache.get_seq_length() == 0 and cache.layers[1].get_max_length() == 8
        keys = weakref.ref(cache.storage.keys)
        del cache
        assert keys() is None
    finally:
        gc.enable()
