"""ARGS-stochastic draws from softmax(score / T) over the top-k: a chi-square test on fixed seeds
(``ARGS_FAST_TEST_SEED`` shifts the sampling seeds; the models stay fixed)."""
import pytest
import torch
from scipy.stats import chi2

import args_fast
from args_fast.engine.backends.reference import ReferencePolicy, ReferenceReward
from args_fast.engine.ops import args_scores
from tiny_models import make_policy, make_reward, padded_prompts, seed_of

K, W, T = 6, 0.2, 0.7


def _expected(policy, reward, ids, temperature):
    logits = ReferencePolicy(policy).prefill(ids, torch.ones_like(ids), 1)
    top_logits, top_ids = logits.topk(K)
    ref = ReferenceReward(reward)
    ref.prefill(ids, torch.ones_like(ids), 1)
    probs = (args_scores(top_logits, ref.score(top_ids), W) / temperature).softmax(-1)[0]
    return top_ids[0], probs


def _counts(policy, reward, ids, backend, rows=500, seeds=tuple(seed_of(s) for s in (11, 12, 13, 14))):
    """First generated token of `rows` copies of one prompt per call: each row is an independent draw."""
    batch = ids.expand(rows, -1)
    firsts = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        out = args_fast.generate(policy, reward, batch, k=K, w=W, mode="stochastic", temperature=T,
                                 max_new_tokens=1, generator=g, backend=backend, eos_token_id=None)
        firsts.append(out.sequences[:, -1])
    return torch.cat(firsts)


def _chi2_pvalue(draws, top_ids, probs):
    observed = torch.stack([(draws == t).sum() for t in top_ids]).double()
    assert observed.sum() == len(draws), "a draw fell outside the top-k"
    expected = probs.double() * len(draws)
    # Pool the bins expected to get fewer than 5 draws (the chi-square approximation needs that).
    small = expected < 5
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    stat = ((observed - expected) ** 2 / expected).sum().item()
    return chi2.sf(stat, df=len(observed) - 1)


@pytest.mark.parametrize("backend", ["hf", "reference"])
def test_choice_frequencies_match_softmax(backend):
    policy, reward = make_policy("llama", 51), make_reward("llama", 52)
    ids, _ = padded_prompts([5], seed=53)
    top_ids, probs = _expected(policy, reward, ids, T)
    assert probs.max() < 0.9, "test setup: the distribution must not be degenerate"
    draws = _counts(policy, reward, ids, backend, rows=500 if backend == "hf" else 100)
    assert _chi2_pvalue(draws, top_ids, probs) > 1e-3
    # The test has power: the same draws clearly reject a different temperature.
    _, wrong = _expected(policy, reward, ids, 3 * T)
    if backend == "hf":
        assert _chi2_pvalue(draws, top_ids, wrong) < 1e-6
