"""The backend table, auto's choice, and the self-check auto runs before staking a run on fast kernels.

On CPU auto never considers the fast static backends (Triton only runs interpreted here), so these
tests put ``static-triton`` first in the CPU order and inject broken ops into its table.
"""
import warnings

import pytest
import torch

from args_fast import ARGSDecoder
from args_fast.engine.backends import registry, self_check, static_engine
from tiny_models import make_policy, make_reward, padded_prompts


@pytest.fixture
def models():
    """Llama with GQA and head dim 16, the Triton attention's smallest tile."""
    return make_policy("llama", seed=3, head_dim=16), make_reward("llama", seed=4, head_dim=16)


@pytest.fixture
def triton_first(monkeypatch):
    """auto on CPU tries static-triton first, and every self-check runs afresh."""
    monkeypatch.setitem(registry.AUTO_ORDER, "default", ("static-triton", "static", "hf", "reference"))
    monkeypatch.setattr(self_check, "RESULTS", {})


def broken(table_loader, **ops):
    """An ops-table loader like ``table_loader`` with some ops replaced."""
    def load(*args):
        table = table_loader(*args)
        return static_engine.OpsTable(table.name, **{**dict(attention=table.attention, topk=table.topk,
                                                            select_commit=table.select_commit), **ops})
    return load


def test_every_backend_and_alias_is_in_the_table():
    assert set(registry.CHOICES) == {"auto"} | set(registry.BACKENDS) | set(registry.ALIASES)
    assert set(registry.ALIASES.values()) <= set(registry.BACKENDS)
    assert set(static_engine.OPS_TABLES) == {n for n in registry.BACKENDS if n.startswith("static")}
    for order in registry.AUTO_ORDER.values():
        assert set(order) <= set(registry.BACKENDS) and order[-1] == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        registry.canonical_name("jax")


def test_auto_takes_a_fast_backend_that_passes_its_self_check(models, triton_first):
    policy, reward = models
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a passing check says nothing
        dec = ARGSDecoder(policy, reward, k=3, max_new_tokens=4)
    assert dec.backend == "static-triton"
    assert list(self_check.RESULTS.values()) == [None]
    ids, mask = padded_prompts([3, 5], seed=1)
    ref = ARGSDecoder(policy, reward, k=3, max_new_tokens=4, backend="reference").generate(ids, mask)
    assert torch.equal(dec.generate(ids, mask).sequences, ref.sequences)


@pytest.mark.parametrize("fault", ["wrong attention", "attention raises", "wrong select"])
def test_auto_falls_back_with_one_warning_when_the_self_check_fails(models, triton_first, monkeypatch, fault):
    policy, reward = models
    triton_ops = static_engine.OPS_TABLES["static-triton"]
    if fault == "wrong attention":
        bad = broken(triton_ops, attention=lambda q, *a, **kw: triton_ops(q.device, [q.shape[-1]], q.dtype, 1)
                     .attention(q, *a, **kw) + 0.5)
    elif fault == "attention raises":
        def fail(*args, **kwargs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        bad = broken(triton_ops, attention=fail)
    else:
        def flipped(top_logits, *args):   # picks the worst-scoring candidate
            return static_engine.torch_ops.select_commit(-top_logits, *args)
        bad = broken(triton_ops, select_commit=flipped)
    monkeypatch.setitem(static_engine.OPS_TABLES, "static-triton", bad)
    with pytest.warns(RuntimeWarning, match="backend 'static-triton' failed its self-check on cpu") as caught:
        dec = ARGSDecoder(policy, reward, k=3, max_new_tokens=4)
    assert dec.backend == "static" and len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # checked once per process: no second warning
        assert ARGSDecoder(policy, reward, k=3, max_new_tokens=4).backend == "static"
    # an explicit choice is the user's: no self-check, no fallback
    assert ARGSDecoder(policy, reward, k=3, backend="static-triton").backend == "static-triton"


def test_explicit_backends_that_cannot_run_say_why(models):
    policy, reward = models
    options = registry.Options(3, 1.0, 1.0, None, 0)
    text = registry.Models(policy, lambda p, r: [0.0] * len(p), "text", tokenizer=object())
    assert "text rewards run on 'hf' or 'reference'" in registry.unavailable_reason("static", text, options)
    narrow = registry.Models(make_policy("llama", seed=3), make_reward("llama", seed=4), "cached")   # head dim 8
    assert "power-of-two head dim in [16, 256], got 8" in registry.unavailable_reason("static-triton", narrow, options)
    with pytest.raises(ValueError, match="backend='static-triton' cannot run these models: the Triton"):
        ARGSDecoder(narrow.policy, narrow.reward_model, backend="static-triton")
