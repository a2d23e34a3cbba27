"""The compiled step (backend ``static-compiled``): the whole static step as one torch.compile graph.

Its parity with the reference on every engine family and both modes is in tests/test_static_engine.py
(it is one of the static ops tables). Here: what is particular to compiling: one graph per bucket of
request shapes (requests of other lengths reuse it), the fused step, ``auto``'s rule for when it
compiles on CPU, the ``compile`` option, and parity in bfloat16 / float16 within those dtypes' error.

Cost: each graph compiles once per process (tens of seconds on 2 CPU cores); the module-scoped decoders
below share their graphs between tests.
"""
import copy
import functools

import pytest
import torch
from torch._dynamo.utils import counters

import args_fast
from args_fast.engine import packed_linear
from args_fast.engine.backends import adaptive, registry, self_check
from args_fast.engine.backends.static_engine import bucket_slots
from tiny_models import make_pair, padded_prompts

VOCAB, CONTEXT, K, W = 72, 128, 4, 1.5


def models(dtype=torch.float32):
    return _models(dtype)


@functools.lru_cache(maxsize=None)
def _models(dtype):
    policy, reward = make_pair("llama-gqa-hd16", 11, vocab=VOCAB, context=CONTEXT, attn="eager", peaked="weights")
    return policy.to(dtype), reward.to(dtype)


def run(backend, ids, mask, *, dtype=torch.float32, mode="greedy", max_new_tokens=6, reward=None, **kw):
    policy, separate = models(dtype)
    return args_fast.generate(policy, reward if reward is not None else separate, ids, mask, k=K, w=W, mode=mode,
                              temperature=0.8, max_new_tokens=max_new_tokens, eos_token_id=[], pad_token_id=0,
                              backend=backend, generator=torch.Generator().manual_seed(3), **kw)


@pytest.fixture(scope="module")
def greedy_decoder():
    policy, reward = models()
    return args_fast.ARGSDecoder(policy, reward, k=K, w=W, max_new_tokens=6, eos_token_id=[], pad_token_id=0,
                                 backend="static-compiled")


def test_bucket_rule():
    assert [bucket_slots(n) for n in (1, 256, 257, 700, 1024, 1025, 4096, 4097, 9000)] == \
        [256, 256, 512, 1024, 1024, 2048, 4096, 8192, 12288]


def test_requests_of_other_lengths_reuse_the_compiled_graph(greedy_decoder):
    ids, mask = padded_prompts([6, 3, 8], seed=1, vocab=VOCAB)
    first = greedy_decoder.generate(ids, mask)
    assert list(greedy_decoder.compile_seconds) == [(3, 256, "greedy")]
    graphs = counters["stats"]["unique_graphs"]
    for lengths, new in (([4, 9, 2], 3), ([12, 12, 1], 6), ([30, 7, 5], 20)):
        ids2, mask2 = padded_prompts(lengths, seed=sum(lengths), vocab=VOCAB)
        out = greedy_decoder.generate(ids2, mask2, max_new_tokens=new)
        assert torch.equal(out.sequences, run("reference", ids2, mask2, max_new_tokens=new).sequences)
    assert counters["stats"]["unique_graphs"] == graphs, "a request of the same bucket recompiled the step"
    assert list(greedy_decoder.compile_seconds) == [(3, 256, "greedy")]
    assert torch.equal(first.sequences, run("reference", ids, mask).sequences)


def test_the_fused_step_compiles_and_matches_the_reference():
    policy, _ = models()
    head = args_fast.RewardHead(policy, torch.randn(policy.config.hidden_size, generator=torch.Generator().manual_seed(0)))
    ids, mask = padded_prompts([5, 2], seed=2, vocab=VOCAB)
    for mode in ("greedy", "stochastic"):
        want, got = (run(b, ids, mask, mode=mode, reward=head) for b in ("reference", "static-compiled"))
        assert torch.equal(want.sequences, got.sequences)
        torch.testing.assert_close(got.rewards, want.rewards, rtol=0, atol=1e-4)


def test_compile_option_is_checked():
    policy, reward = models()
    for bad in ("yes", 1, 0.0):
        with pytest.raises(ValueError, match="compile must be None"):
            args_fast.ARGSDecoder(policy, reward, compile=bad)
    with pytest.raises(ValueError, match="compile=True applies to backend='auto'"):
        args_fast.ARGSDecoder(policy, reward, backend="hf", compile=True)
    with pytest.raises(ValueError, match="compile=False applies"):
        args_fast.ARGSDecoder(policy, reward, backend="static-compiled", compile=False)
    assert args_fast.ARGSDecoder(policy, reward, compile=False).engine.__class__.__name__ != "AdaptiveEngine"


def test_auto_on_cpu_stays_eager_for_short_requests_and_compiles_for_long_ones(greedy_decoder, monkeypatch):
    policy, reward = models()
    decoder = args_fast.ARGSDecoder(policy, reward, k=K, w=W, max_new_tokens=6, eos_token_id=[], pad_token_id=0)
    engine = decoder.engine
    assert decoder.backend == "hf" and isinstance(engine, adaptive.AdaptiveEngine)
    # each dtype from its own threshold (float32 2048, 16-bit floats 4096), any other dtype never
    assert engine.min_steps == adaptive.COMPILE_MIN_STEPS[torch.float32] == 2048
    assert "requests of >= 2048 new tokens run the compiled static step" in decoder.backend_description
    assert adaptive.compile_min_steps(torch.bfloat16) == adaptive.compile_min_steps(torch.float16) == 4096
    assert adaptive.compile_min_steps(torch.float64) == adaptive.NEVER
    ids, mask = padded_prompts([6, 3, 8], seed=1, vocab=VOCAB)
    decoder.generate(ids, mask)
    assert engine.compiled is None and engine.current is engine.eager, "a short request compiled"
    # a long request compiles (here: lower the threshold; the self-check's answer for these head dims is
    # taken as passed, its own test is in test_backend_registry.py)
    monkeypatch.setattr(engine, "min_steps", 6)
    for key in [k for k in list(self_check.RESULTS) if k[0] == "static-compiled"]:
        monkeypatch.setitem(self_check.RESULTS, key, None)
    monkeypatch.setitem(self_check.RESULTS, ("static-compiled", "cpu", torch.float32, 16, 16), None)
    out = decoder.generate(ids, mask)
    assert engine.current is engine.compiled and engine.compiled is not None
    assert torch.equal(out.sequences, run("reference", ids, mask).sequences)
    # once compiled for a shape, shorter requests of that shape use it too
    monkeypatch.setattr(engine, "min_steps", 10**9)
    decoder.generate(ids, mask, max_new_tokens=3)
    assert engine.current is engine.compiled


def test_the_threshold_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ARGS_FAST_COMPILE_MIN_STEPS", "64")
    assert adaptive.compile_min_steps() == 64 and adaptive.compile_min_steps(torch.bfloat16) == 64
    for bad in ("-1", "many"):
        monkeypatch.setenv("ARGS_FAST_COMPILE_MIN_STEPS", bad)
        with pytest.raises(ValueError, match="ARGS_FAST_COMPILE_MIN_STEPS must be an int >= 0"):
            adaptive.compile_min_steps()


# ---------------------------------------------------------------------------------- bf16 / fp16
def literal_scores(policy, reward, prefix: list[int]) -> torch.Tensor:
    """The k candidate scores logit + w * reward after ``prefix``, computed literally (full forwards)
    in the models' own dtype, sorted descending."""
    with torch.no_grad():
        logits = policy(torch.tensor([prefix])).logits[0, -1].float()
        top, ids = logits.topk(K)
        seqs = torch.tensor([prefix + [int(v)] for v in ids])
        rewards = reward(seqs).logits[:, 0].float()
    return (top + W * rewards).sort(descending=True).values


def assert_same_within_dtype_error(dtype, want, got, prompt_ids, prompt_mask, pair=None):
    """Tokens may differ from the reference only at a step where the reference's two best scores are
    closer than that dtype's error there, defined as twice the largest difference between the k
    candidates' scores computed in ``dtype`` and in float32 (same weights, upcast). Rows are compared
    up to their first difference (after it the contexts differ)."""
    policy, reward = models(dtype) if pair is None else pair
    upcast = copy.deepcopy(policy).float(), copy.deepcopy(reward).float()   # the same weights, in float32
    width = prompt_ids.shape[1]
    differing = 0
    for row in range(want.sequences.shape[0]):
        a, b = want.sequences[row, width:].tolist(), got.sequences[row, width:].tolist()
        step = next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if step is None:
            continue
        differing += 1
        prefix = prompt_ids[row][prompt_mask[row].bool()].tolist() + a[:step]
        low = literal_scores(policy, reward, prefix)
        full = literal_scores(*upcast, prefix)
        error = 2 * float((low - full).abs().max())
        gap = float(low[0] - low[1])
        assert gap <= error, (f"{dtype} row {row} differs at step {step} where the reference's two best scores are "
                              f"{gap:.4g} apart, more than the dtype's error {error:.4g}")
    return differing


@pytest.mark.parametrize("dtype, backend", [(torch.bfloat16, "static-compiled"), (torch.bfloat16, "hf"),
                                            (torch.float16, "hf"), (torch.float16, "static")])
def test_low_precision_matches_the_reference_within_the_dtype_error(dtype, backend):
    ids, mask = padded_prompts([6, 3, 8, 5], seed=4, vocab=VOCAB)
    want = run("reference", ids, mask, dtype=dtype, max_new_tokens=8)
    got = run(backend, ids, mask, dtype=dtype, max_new_tokens=8)
    assert_same_within_dtype_error(dtype, want, got, ids, mask)


def test_the_dtype_rule_refuses_a_difference_where_the_scores_are_far_apart():
    """The rule can fail: a token swapped at a step whose best score leads clearly is refused."""
    ids, mask = padded_prompts([6, 3], seed=4, vocab=VOCAB)
    want = run("reference", ids, mask, dtype=torch.bfloat16, max_new_tokens=4)
    policy, reward = models(torch.bfloat16)
    width = ids.shape[1]
    scores = literal_scores(policy, reward, ids[0][mask[0].bool()].tolist())
    assert float(scores[0] - scores[1]) > 0.05, "test setup: the first step must have a clear winner"
    got = type(want)(want.sequences.clone(), want.rewards)
    got.sequences[0, width] = (got.sequences[0, width] + 1) % VOCAB
    with pytest.raises(AssertionError, match="more than the dtype's error"):
        assert_same_within_dtype_error(torch.bfloat16, want, got, ids, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_are_each_engines_own_and_follow_changes(dtype):
    """On CPU the compiled step's linears run on packed copies of the weights. Two engines on models of
    the same shapes but other weights must each run their own weights, and an engine must see its
    model's weights change in place."""
    if packed_linear.unavailable_reason(dtype):
        pytest.skip(packed_linear.unavailable_reason(dtype))
    base, reward = models(dtype)
    policy, other = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():    # other weights, same shapes: reversed output rows, so the tokens differ
        other.lm_head.weight.copy_(other.lm_head.weight.flip(0))
        other.model.layers[0].mlp.up_proj.weight.mul_(-1)
    ids, mask = padded_prompts([6, 3, 8], seed=5, vocab=VOCAB)

    def check(decoder, model):
        got = decoder.generate(ids, mask)
        want = args_fast.generate(model, reward, ids, mask, k=K, w=W, max_new_tokens=6, eos_token_id=[],
                                  pad_token_id=0, backend="reference")
        if dtype == torch.float32:
            assert torch.equal(got.sequences, want.sequences)
        else:
            assert_same_within_dtype_error(dtype, want, got, ids, mask, pair=(model, reward))
        return got

    decoders = [args_fast.ARGSDecoder(m, reward, k=K, w=W, max_new_tokens=6, eos_token_id=[], pad_token_id=0,
                                      backend="static-compiled") for m in (policy, other)]
    assert all(d.engine.packed for d in decoders)
    first = check(decoders[0], policy)
    second = check(decoders[1], other)
    assert not torch.equal(first.sequences, second.sequences), "test setup: the two models must decode differently"
    with torch.no_grad():    # the first model's weights change in place: its engine packs them again
        policy.load_state_dict(other.state_dict())
    again = check(decoders[0], policy)
    assert torch.equal(again.sequences, second.sequences)
    assert list(decoders[0].compile_seconds) == [(3, 256, "greedy")], "repacking must not recompile"


def test_registry_lists_the_compiled_backend():
    assert "static-compiled" in registry.BACKENDS and registry.BACKENDS["static-compiled"].self_check
