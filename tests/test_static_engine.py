"""The static engine against the `reference` backend, through the one decoding loop.

Every ops table that can load here is held to the oracle: "static" (torch ops), "static-triton"
(Triton kernels, under TRITON_INTERPRET=1 on CPU) and "static-csrc" (csrc extension ops; its CPU
build on CPU); the ones that cannot load are skipped with the reason. float32, CPU unless CUDA is present; tiny
models with head dim 16 (the Triton attention's smallest tile).
"""
import functools

import pytest
import torch

from args_fast.engine.backends import registry
from args_fast.engine.backends.static_engine import OPS_TABLES, BackendUnavailable, build_static_engine
from args_fast.decoding.decoder import ARGSDecoder
from tiny_models import ENGINE_VARIANTS, PAD, make_pair, padded_prompts

STATIC_BACKENDS = tuple(OPS_TABLES)

VOCAB, CONTEXT = 72, 64
LENGTHS = [5, 2, 7, 3]
K, STEPS, W = 4, 7, 1.5
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=None)
def models(variant, seed=0):
    """The (policy, reward) pair of ``variant`` (head dim 16; eager attention): peaked attention (HF's
    std 0.02 init leaves it near uniform) and rewards of order 1."""
    return make_pair(variant, seed, vocab=VOCAB, context=CONTEXT, attn="eager", peaked="weights", device=DEVICE)


prompts = functools.partial(padded_prompts, vocab=VOCAB)


def engine(backend, policy, reward, eos=None, k=K, w=W, temperature=0.7, **kw):
    return build_static_engine(backend, policy, reward, k=k, w=w, temperature=temperature,
                               eos_ids=eos or None, pad_id=0, **kw)


def decoder(policy, reward, backend, mode, eos, engine_kw=None, ready=None):
    """An ARGSDecoder on ``backend``; with ``engine_kw`` (e.g. use_graph) or a ``ready`` engine, the
    decoder drives that engine (the public ``engine=`` argument) instead of building its own."""
    if engine_kw is not None:
        ready = engine(backend, policy, reward, eos, **engine_kw)
    return ARGSDecoder(policy, reward, k=K, w=W, mode=mode, temperature=0.7, max_new_tokens=STEPS,
                       eos_token_id=eos, pad_token_id=0, backend=backend, engine=ready)


def generate(dec, ids, mask, seed=0):
    return dec.generate(ids, mask, generator=torch.Generator().manual_seed(seed))


def first_stops(generated, eos):
    """Step at which each row first emits one of ``eos`` (None if never)."""
    hits = torch.isin(generated, torch.tensor(eos))
    return [int(row.nonzero()[0]) if row.any() else None for row in hits]


def staggered_eos(variant, mode):
    """One or two EOS tokens that the unbounded run emits first at the most distinct steps across rows."""
    policy, reward = models(variant)
    ids, mask = prompts(LENGTHS)
    free = generate(decoder(policy, reward, "static", mode, eos=[]), ids, mask).sequences[:, ids.shape[1]:].cpu()
    seen = free.unique().tolist()
    candidates = [[a] for a in seen] + [[a, b] for i, a in enumerate(seen) for b in seen[i + 1:]]
    return max(candidates, key=lambda eos: len({s for s in first_stops(free, eos) if s is not None}))


@functools.lru_cache(maxsize=None)
def reference_run(variant, mode):
    policy, reward = models(variant)
    ids, mask = prompts(LENGTHS)
    eos = staggered_eos(variant, mode)
    return eos, generate(decoder(policy, reward, "reference", mode, eos=eos), ids, mask)


def skip_unless_available(backend, policy, reward):
    models = registry.Models(policy, reward, "cached")
    reason = registry.unavailable_reason(backend, models, registry.Options(K, W, 0.7, None, 0))
    if reason is not None:
        pytest.skip(reason)


def assert_same(a, b):
    assert torch.equal(a.sequences.cpu(), b.sequences.cpu()), (a.sequences, b.sequences)
    assert torch.equal(a.rewards.isnan().cpu(), b.rewards.isnan().cpu())
    torch.testing.assert_close(a.rewards.nan_to_num().cpu(), b.rewards.nan_to_num().cpu(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("backend", STATIC_BACKENDS)
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
@pytest.mark.parametrize("variant", ENGINE_VARIANTS)
def test_engine_matches_reference(variant, mode, backend):
    policy, reward = models(variant)
    skip_unless_available(backend, policy, reward)
    eos, ref = reference_run(variant, mode)
    ids, mask = prompts(LENGTHS)
    stops = {s for s in first_stops(ref.sequences[:, ids.shape[1]:].cpu(), eos) if s is not None}
    assert len(stops) >= 2 and ref.rewards.isnan().any(), "test setup: rows must stop at different steps"
    assert_same(ref, generate(decoder(policy, reward, backend, mode, eos=eos), ids, mask))


def test_eager_cross_device_path_matches_fused_path():
    """The path for policy and reward model on different devices (select where the logits are, commit
    where the reward cache is), forced on one device here."""
    policy, reward = models("llama-gqa-hd16")
    ids, mask = prompts(LENGTHS, seed=3)
    split_engine = engine("static", policy, reward, use_graph=False)
    split_engine.same_device = False
    split = generate(decoder(policy, reward, "static", "stochastic", eos=[], ready=split_engine), ids, mask)
    fused = generate(decoder(policy, reward, "static", "stochastic", eos=[], engine_kw=dict(use_graph=False)), ids, mask)
    assert_same(split, fused)


def test_reward_cache_is_prefix_once_plus_k_slots():
    policy, reward = models("llama-gqa-hd16")
    ids, mask = prompts(LENGTHS)
    dec = decoder(policy, reward, "static", "greedy", eos=[])
    generate(dec, ids, mask)
    engine = dec.engine
    cfg = policy.config
    layers, kv, dim, prompt = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, ids.shape[1]
    assert engine.rcache.keys.shape == (layers, len(LENGTHS), kv, prompt + STEPS + K, dim)
    assert engine.pcache.keys.shape == (layers, len(LENGTHS), kv, prompt + STEPS, dim)
    per_slot = 2 * layers * len(LENGTHS) * kv * dim * engine.rcache.keys.element_size()
    assert engine.memory_bytes() == {"policy_kv": per_slot * (prompt + STEPS), "reward_kv": per_slot * (prompt + STEPS + K)}


def test_engine_is_reusable_across_requests():
    """One engine (caches sized once, graph captured once on CUDA) serves prompts of any length that fit."""
    policy, reward = models("opt-hd16")
    ready = engine("static", policy, reward)
    ready.allocate(3, 9 + STEPS)
    keys = ready.rcache.keys
    for lengths, seed in (([9, 4, 6], 1), ([2, 3, 1], 2), ([8, 8, 5], 3)):
        ids, mask = prompts(lengths, seed)
        reused = generate(decoder(policy, reward, "static", "stochastic", eos=[], ready=ready), ids, mask, seed)
        fresh = generate(decoder(policy, reward, "reference", "stochastic", eos=[]), ids, mask, seed)
        assert_same(reused, fresh)
    assert ready.rcache.keys is keys   # no reallocation


@pytest.mark.parametrize("variant", ENGINE_VARIANTS)
def test_policy_only_engine_is_hf_greedy_decoding(variant):
    """reward_model=None, k=1: the policy's plain greedy decode (the benchmark's baseline) == HF generate."""
    policy, _ = models(variant)
    ids, mask = prompts(LENGTHS, seed=4)
    plain = engine("static", policy, None, k=1, w=0.0, temperature=1.0)
    plain.prefill(ids.to(DEVICE), mask.to(DEVICE), STEPS)
    tokens = torch.stack([plain.step(None)[0].clone() for _ in range(STEPS)], 1)
    want = policy.generate(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), do_sample=False,
                           max_new_tokens=STEPS, min_new_tokens=STEPS, pad_token_id=PAD)[:, ids.shape[1]:]
    assert torch.equal(tokens, want)


def test_more_steps_than_sized_for_is_an_error():
    policy, reward = models("gpt2-hd16")
    ids, mask = prompts([3, 2])
    sized = engine("static", policy, reward, k=2, w=1.0, temperature=1.0)
    sized.prefill(ids.to(DEVICE), mask.to(DEVICE), 2)
    sized.step(None)
    sized.step(None, last=True)
    with pytest.raises(RuntimeError, match="max_new_tokens"):
        sized.step(None)


def test_availability_reports_reasons():
    policy, reward = models("llama-gqa-hd16")
    options = registry.Options(2, 1.0, 1.0, None, 0)
    assert registry.unavailable_reason("static", registry.Models(policy, reward, "cached"), options) is None
    reason = registry.unavailable_reason("static", registry.Models(policy, policy, "cached"), options)
    assert reason.startswith("reward_model")
    with pytest.raises(BackendUnavailable, match="reward_model"):
        engine("static", policy, policy)
    with pytest.raises(ValueError, match="backend='static' cannot run these models: reward_model"):
        registry.build("static", registry.Models(policy, policy, "cached"), options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
@pytest.mark.parametrize("backend", STATIC_BACKENDS)
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
@pytest.mark.parametrize("new_tokens", [1, STEPS])   # 1: the capture warm-up must stay inside the caches
def test_cuda_graph_replay_matches_eager(backend, mode, new_tokens):
    policy, reward = models("llama-gqa-hd16")
    skip_unless_available(backend, policy, reward)
    ids, mask = prompts(LENGTHS, seed=6)
    outs = []
    for use_graph in (True, False):
        dec = decoder(policy, reward, backend, mode, eos=[5], engine_kw=dict(use_graph=use_graph))
        outs.append(dec.generate(ids, mask, max_new_tokens=new_tokens, generator=torch.Generator().manual_seed(0)))
    assert outs[0].sequences.shape == outs[1].sequences.shape
    assert_same(*outs)


@pytest.mark.parametrize("backend", STATIC_BACKENDS)
@pytest.mark.parametrize("k,w,mode", [(1, 1.5, "greedy"), (10, 0.0, "greedy"), (10, 3.0, "stochastic"),
                                      (VOCAB - 1, 0.5, "greedy"), (VOCAB, 2.0, "stochastic")])
def test_public_generate_matches_reference(backend, k, w, mode):
    """``args_fast.generate(backend=...)`` over k from 1 to the whole vocabulary and several w: the
    static backends as users call them, against the oracle, on a padded batch with staggered EOS."""
    import args_fast
    policy, reward = models("llama-gqa-hd16", seed=1)
    skip_unless_available(backend, policy, reward)
    ids, mask = prompts([4, 1, 6], seed=7)
    runs = {}
    for name in ("reference", backend):
        runs[name] = args_fast.generate(policy, reward, ids, mask, k=k, w=w, mode=mode, temperature=0.9,
                                        max_new_tokens=6, eos_token_id=[9, 17, 30], pad_token_id=0, backend=name,
                                        generator=torch.Generator().manual_seed(k))
    assert_same(runs["reference"], runs[backend])


def test_explicit_static_backend_rejects_what_it_cannot_run():
    import args_fast
    policy, reward = models("llama-gqa-hd16")
    ids, _ = prompts([3])
    with pytest.raises(ValueError, match="backend='static' cannot run these models: it needs a causal"):
        args_fast.generate(policy, lambda p, r: [0.0] * len(p), ids, backend="static", tokenizer=object())
    with pytest.raises(ValueError, match="backend='bogus'|backend must be"):
        args_fast.generate(policy, reward, ids, backend="bogus")


def test_auto_picks_hf_on_cpu_and_the_engine_is_built_once():
    policy, reward = models("llama-gqa-hd16")
    if DEVICE == "cpu":
        assert ARGSDecoder(policy, reward).backend == "hf"
    dec = ARGSDecoder(policy, reward, k=3, backend="static", max_new_tokens=4)
    ids, mask = prompts([3, 5])
    first = dec.engine
    dec.generate(ids, mask)
    keys = first.rcache.keys
    dec.generate(ids, mask)
    assert dec.engine is first and first.rcache.keys is keys   # same engine, same caches


@pytest.mark.parametrize("old,new", list(registry.ALIASES.items()))
def test_old_backend_names_still_work_with_a_deprecation_warning(old, new):
    policy, reward = models("llama-gqa-hd16")
    with pytest.warns(DeprecationWarning, match=f"backend={old!r} is deprecated.*backend={new!r}"):
        try:
            dec = ARGSDecoder(policy, reward, k=3, backend=old)
        except ValueError as exc:   # an ops table that cannot load here still maps the name first
            assert f"backend={new!r}" in str(exc)
            return
    assert dec.backend == new


def test_options_are_read_only_and_replace_builds_a_new_decoder():
    policy, reward = models("llama-gqa-hd16")
    dec = ARGSDecoder(policy, reward, k=3, w=1.0, backend="static", max_new_tokens=4)
    for name in ("k", "w", "mode", "temperature", "backend", "eos_token_id", "pad_token_id"):
        with pytest.raises(AttributeError):
            setattr(dec, name, getattr(dec, name))
    other = dec.replace(w=2.5)
    assert other.w == 2.5 and other.k == 3 and other.engine is not dec.engine and dec.w == 1.0
    ids, mask = prompts([3, 5])
    want = ARGSDecoder(policy, reward, k=3, w=2.5, backend="reference", max_new_tokens=4).generate(ids, mask)
    assert_same(other.generate(ids, mask), want)
    with pytest.raises(TypeError, match="replace"):
        dec.replace(bogus=1)


def test_a_passed_engine_must_have_the_decoders_options():
    policy, reward = models("llama-gqa-hd16")
    with pytest.raises(ValueError, match="engine.w is 2.0 but the decoder's is 1.5"):
        decoder(policy, reward, "static", "greedy", eos=[], ready=engine("static", policy, reward, w=2.0))
    with pytest.raises(TypeError, match="engine must implement"):
        ARGSDecoder(policy, reward, engine=object())
