"""Static runners (args_fast.runners) against the Hugging Face models they borrow weights from.

float32 on CPU, tiny random-init configs of every supported variant, left-padded batches; logits and
rewards must agree within 1e-4 for prefill, for decode steps and for the k-candidate reward pass.
"""
import functools

import pytest
import torch

from args_fast.engine import ops
from args_fast.engine.backends.static_engine import sdpa_candidate_attention
from args_fast.engine.runners import static_runner, unsupported_reason
from tiny_models import RUNNER_VARIANTS, make_model, padded_prompts, seed_of

VOCAB, CONTEXT = 80, 256
ATOL = 1e-4
# peaked init: non-trivial norms, biases, score head and attention, so a wrong mapping shows
make = functools.partial(make_model, vocab=VOCAB, context=CONTEXT, attn="eager", peaked=True)
prompts = functools.partial(padded_prompts, vocab=VOCAB)


def hf_positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def hf_hidden(model, ids, mask):
    """HF's last hidden state with positions counted over real tokens (as generate does)."""
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask))
    return out.last_hidden_state


def unpadded(ids, mask):
    return [row[m.bool()] for row, m in zip(ids, mask)]


@pytest.mark.parametrize("variant", RUNNER_VARIANTS)
@torch.no_grad()
def test_causal_lm_prefill_and_decode_match_hf(variant):
    hf = make(variant, "lm", seed=len(variant))
    runner = static_runner(hf, "lm")
    ids, mask = prompts([6, 1, 9, 4], seed=len(variant))
    steps = 4
    cache = runner.new_cache(ids.shape[0], ids.shape[1] + steps)
    logits = runner.outputs(runner.prefill(ids, mask, cache))
    expected = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], rtol=0, atol=ATOL)
    assert cache.prefix_start.tolist() == (ids.shape[1] - mask.sum(-1)).tolist()
    # decode one token per row per step; compare with HF over the whole unpadded sequence
    rows = unpadded(ids, mask)
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        token = torch.randint(3, VOCAB, (ids.shape[0], 1), generator=g)
        got = runner.outputs(runner.decode(token, cache, ops.candidate_attention))[:, -1]
        cache.prefix_end += 1
        rows = [torch.cat([r, t]) for r, t in zip(rows, token)]
        want = torch.stack([hf(input_ids=r[None]).logits[0, -1] for r in rows])
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("variant", RUNNER_VARIANTS)
@torch.no_grad()
def test_reward_candidates_and_commit_match_hf(variant):
    """k candidates per row in one pass == HF's reward of each context + candidate; after committing
    a chosen candidate the next pass still matches (the winner's K/V moved into the prefix)."""
    hf = make(variant, "reward", seed=len(variant) + 1)
    runner = static_runner(hf, "reward")
    ids, mask = prompts([3, 8, 1, 5, 7], seed=3)
    k, steps = 5, 3
    cache = runner.new_cache(ids.shape[0], ids.shape[1] + steps + k)
    runner.prefill(ids, mask, cache)
    rows = unpadded(ids, mask)
    g = torch.Generator().manual_seed(11)
    for _ in range(steps):
        candidates = torch.randint(3, VOCAB, (ids.shape[0], k), generator=g)
        got = runner.outputs(runner.decode(candidates, cache, ops.candidate_attention))
        want = torch.stack([hf.score(hf_hidden(hf, torch.cat([r.expand(k, -1), c[:, None]], 1),
                                               torch.ones(k, len(r) + 1, dtype=torch.long))[:, -1]).squeeze(-1)
                            for r, c in zip(rows, candidates)])
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
        choice = torch.randint(0, k, (ids.shape[0],), generator=g)
        ops.commit_slots_(cache.keys, cache.values, cache.prefix_end, choice)
        cache.prefix_end += 1
        rows = [torch.cat([r, c[j].view(1)]) for r, c, j in zip(rows, candidates, choice)]


@torch.no_grad()
def test_hf_sequence_classification_pooling_agrees():
    """Our reward = score head on the last token, which is what HF's pooled logits are for a
    left-padded batch ending in a non-pad token."""
    hf = make("llama-gqa", "reward", seed=5)
    runner = static_runner(hf, "reward")
    ids, mask = prompts([4, 7, 2], seed=9)
    cache = runner.new_cache(3, ids.shape[1])
    got = runner.outputs(runner.prefill(ids, mask, cache))[:, -1]
    want = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits[:, 0]
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("hq,hkv,k", [(4, 4, 1), (6, 2, 5), (8, 1, 3)])
def test_sdpa_candidate_attention_matches_reference(hq, hkv, k):
    g = torch.Generator().manual_seed(seed_of(hq * 10 + k))
    batch, slots, dim = 3, 17, 8
    q = torch.randn(batch, hq, k, dim, generator=g)
    kc, vc = torch.randn(2, batch, hkv, slots, dim, generator=g)
    start = torch.tensor([0, 4, 9])
    end = torch.tensor([10, 10, 12])
    for scale in (None, 0.3):
        torch.testing.assert_close(sdpa_candidate_attention(q, kc, vc, start, end, scale),
                                   ops.candidate_attention(q, kc, vc, start, end, scale), rtol=0, atol=1e-5)


def test_select_commit_reference_is_select_then_commit():
    """ops.select_commit (the fused contract's reference) = select_candidates + commit_slots_, in place."""
    g = torch.Generator().manual_seed(seed_of(0))
    batch, k, layers, heads, slots, dim = 4, 3, 2, 2, 9, 4
    logits, rewards, u = torch.randn(batch, k, generator=g), torch.randn(batch, k, generator=g), torch.rand(batch, k, generator=g)
    ids = torch.randint(0, 50, (batch, k), generator=g)
    kc, vc = torch.randn(2, layers, batch, heads, slots, dim, generator=g)
    end = torch.tensor([3, 3, 5, 2])
    finished = torch.tensor([False, True, False, False])
    eos = ids[2, :].clone()   # every candidate of row 2 is an EOS
    want = ops.select_candidates(logits, ids, rewards, 0.7, u, 0.5, finished, eos, 0)
    kw, vw = kc.clone(), vc.clone()
    ops.commit_slots_(kw, vw, end, want[0])
    f2, e2, k2, v2 = finished.clone(), end.clone(), kc.clone(), vc.clone()
    got = ops.select_commit(logits, ids, rewards, u, 0.7, 0.5, f2, eos, 0, k2, v2, e2)
    for a, b in zip(got, want[:3]):
        torch.testing.assert_close(a, b, equal_nan=True)
    assert torch.equal(f2, want[3]) and f2[2] and torch.equal(e2, end + 1)
    assert torch.equal(k2, kw) and torch.equal(v2, vw)


def test_unsupported_models_are_refused_with_a_reason():
    lm, rm = make("llama-gqa", "lm", 0), make("llama-gqa", "reward", 1)
    assert unsupported_reason(lm, "lm") is None and unsupported_reason(rm, "reward") is None
    assert "ForSequenceClassification" in unsupported_reason(lm, "reward")
    with pytest.raises(ValueError, match="static runner"):
        static_runner(rm, "lm")
    bert_like = torch.nn.Linear(2, 2)
    assert "model_type" in unsupported_reason(bert_like, "lm")
    # sliding windows: the runner does not apply them; ARGSDecoder refuses requests longer than the
    # window on the backends that run it (tests/test_input_errors.py)


def test_runner_shares_the_hf_weights():
    hf = make("qwen2", "lm", 0)
    runner = static_runner(hf, "lm")
    hf_ptrs = {p.data_ptr() for p in hf.parameters()}
    assert {p.data_ptr() for p in runner.parameters()} <= hf_ptrs
