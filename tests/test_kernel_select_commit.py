"""The fused Triton select + commit against its torch reference (args_fast.ops.select_commit:
select_candidates + commit_slots_ + prefix_end += 1), through the Triton interpreter on CPU.

Tolerances per input dtype are in :data:`TOLERANCES`, and they are all zero: scores are computed in
fp32 from whatever the logits and rewards are, and the rest is a selection and copies, so every
comparison is exact for every dtype: the same choice, token, reward (nan where finished), finished
flags, the whole K and V cache tensors and prefix_end.

Inputs are random draws from ``tiny_models.seeds`` (fixed by default; ``ARGS_FAST_TEST_SEED=<int>``
or ``=random`` for fresh ones); the seed is in every failure message.
"""
import pytest
import torch

from args_fast.engine.kernels import select_commit
from args_fast.engine.ops import select_commit as select_commit_reference
from tiny_models import seeds

# dtype of the logits, rewards and K/V caches: (atol, rtol) of the reward and cache comparisons.
# Exact: the kernel upcasts logits and rewards to fp32 before score = logit + w * reward, as the
# reference does, returns the chosen reward as fp32 of the same input value, and moves cache rows
# bit for bit. (Choices, tokens, flags and prefix_end are integers: always compared exactly.)
TOLERANCES = {
    torch.float32: (0.0, 0.0),
    torch.bfloat16: (0.0, 0.0),
    torch.float16: (0.0, 0.0),
}


def make_step(gen, batch, k, *, layers=2, heads=2, dim=16, ties=False, dtype=torch.float32,
              id_dtype=torch.int64, eos="several", layout="contiguous", finished_frac=0.3):
    """One step's inputs; logits, rewards and caches in ``dtype``. ``ties``: logits and rewards drawn
    from a few small integers, so equal scores (and equal Gumbel-perturbed scores, with repeated
    uniforms) are common."""
    if ties:
        logits = torch.randint(-2, 3, (batch, k), generator=gen).float()
        rewards = torch.randint(-1, 2, (batch, k), generator=gen).float()
    else:
        logits = torch.randn(batch, k, generator=gen) * 3
        rewards = torch.randn(batch, k, generator=gen)
    logits = logits.sort(-1, descending=True).values.to(dtype)
    rewards = rewards.to(dtype)
    ids = torch.randint(0, 50, (batch, k), generator=gen).to(id_dtype)
    uniforms = torch.rand(batch, k, generator=gen)
    if ties:   # repeat a few uniforms across candidates so perturbed scores tie too
        uniforms = uniforms[:, :1].expand(batch, k).clone()
    uniforms[0, 0] = 0.0                      # clamped to tiny
    uniforms[-1, -1] = 1.0                    # clamped to 1 - eps (outside [0, 1) but must not blow up)
    finished = torch.rand(batch, generator=gen) < finished_frac
    eos_ids = {"several": torch.tensor([3, 7, int(ids[0, 0]), int(ids[-1, 0])]), "one": torch.tensor([5]),
               "none": None, "empty": torch.tensor([], dtype=torch.long)}[eos]
    end = torch.randint(0, 8, (batch,), generator=gen)
    slots = int(end.max()) + k + 2
    shape = (layers, batch, heads, slots, dim)
    if layout == "contiguous":
        kc, vc = torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype)
    else:   # slot-major storage seen as (layers, B, H, S, D), and a V with padded rows
        kc = torch.randn(layers, batch, slots, heads, dim, generator=gen).to(dtype).transpose(2, 3)
        vc = torch.randn(shape[:-1] + (dim + 5,), generator=gen).to(dtype)[..., :dim]
    return dict(top_logits=logits, top_ids=ids, rewards=rewards, uniforms=uniforms, finished=finished,
                eos_ids=eos_ids, k_cache=kc, v_cache=vc, prefix_end=end)


def clone(step):
    return {n: (t.clone() if isinstance(t, torch.Tensor) else t) for n, t in step.items()}


def run_both(step, stochastic, w, temperature, pad_id):
    a, b = clone(step), clone(step)
    common = dict(w=w, temperature=temperature, pad_id=pad_id)
    if not stochastic:
        a["uniforms"] = b["uniforms"] = None
    out = select_commit(**a, **common)
    ref = select_commit_reference(**b, **common)
    return a, b, out, ref


def assert_same(a, b, out, ref, seed):
    """Outputs and in-place state of the kernel (``a``, ``out``) against the reference's (``b``,
    ``ref``): integers and flags exactly, floats per :data:`TOLERANCES` of the logits' dtype (nan
    where the reference has nan)."""
    atol, rtol = TOLERANCES[a["top_logits"].dtype]
    for name, x, y in zip(("choice", "token", "reward"), out, ref):
        assert x.dtype == y.dtype, f"seed {seed}: {name} dtype {x.dtype} != {y.dtype}"
        if x.is_floating_point():
            torch.testing.assert_close(x, y, atol=atol, rtol=rtol, equal_nan=True,
                                       msg=lambda m: f"seed {seed}: {name}: {m}")
        else:
            assert torch.equal(x, y), f"seed {seed}: {name} {x.tolist()} != reference {y.tolist()}"
    for name in ("finished", "prefix_end"):
        assert torch.equal(a[name], b[name]), f"seed {seed}: {name} differs from the reference after the step"
    for name in ("k_cache", "v_cache"):
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, equal_nan=True,
                                   msg=lambda m: f"seed {seed}: {name} after the step: {m}")


# every k in float32; the 16-bit dtypes (an upcast at the loads) on one slot-major and one contiguous k
DTYPE_K = [(torch.float32, k) for k in (1, 3, 10, 40, 64)] + [(d, k) for d in TOLERANCES if d != torch.float32
                                                               for k in (3, 64)]


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("dtype,k", DTYPE_K)
@pytest.mark.parametrize("stochastic", [False, True])
def test_matches_reference(seed, dtype, k, stochastic):
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, 9, k, dtype=dtype, layout="slot_major" if k % 2 else "contiguous")
    a, b, out, ref = run_both(step, stochastic, w=1.7, temperature=0.7, pad_id=0)
    assert_same(a, b, out, ref, seed)


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stochastic", [False, True])
def test_ties_pick_the_first_maximum(seed, dtype, stochastic):
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, 16, 10, ties=True, dtype=dtype)
    a, b, out, ref = run_both(step, stochastic, w=1.0, temperature=1.0, pad_id=0)
    assert_same(a, b, out, ref, seed)
    scores = step["top_logits"].float() + step["rewards"].float()
    if not stochastic:   # independent of the reference: the first index among equal maxima
        first = (scores == scores.max(-1, keepdim=True).values).int().argmax(-1)
        assert torch.equal(out[0], first), f"seed {seed}"


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("eos", ["several", "one", "none", "empty"])
def test_eos_and_finished_rows(seed, eos):
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, 12, 5, eos=eos, finished_frac=0.4)
    step["top_ids"][1, :] = 7 if eos == "several" else 5   # row 1 emits an eos id whatever it picks
    step["finished"][1] = False
    for stochastic in (False, True):
        a, b, out, ref = run_both(step, stochastic, w=0.5, temperature=1.3, pad_id=5)
        assert_same(a, b, out, ref, seed)
        if eos in ("several", "one"):
            assert bool(a["finished"][1])
        assert torch.equal(out[1][step["finished"]], torch.full_like(out[1][step["finished"]], 5))
        assert bool(out[2][step["finished"]].isnan().all())


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_input_dtypes_and_int32_ids(seed, dtype, id_dtype):
    """Logits, rewards and caches of every dtype with int32 or int64 ids: tokens keep the ids' dtype."""
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, 8, 10, dtype=dtype, id_dtype=id_dtype)
    for stochastic in (False, True):
        assert_same(*run_both(step, stochastic, w=2.0, temperature=0.5, pad_id=1), seed)


@pytest.mark.parametrize("seed", seeds(2))
def test_nan_scores_pick_the_first_nan_like_torch_argmax(seed):
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, 4, 6, finished_frac=0.0)
    step["rewards"][0, 2] = float("nan")
    step["rewards"][0, 4] = float("nan")
    step["top_logits"][1, 3] = float("-inf")
    step["top_logits"][2, :] = float("-inf")   # all -inf: index 0, like torch.argmax
    for stochastic in (False, True):
        a, b, out, ref = run_both(step, stochastic, w=1.0, temperature=1.0, pad_id=0)
        assert_same(a, b, out, ref, seed)
        assert int(out[0][0]) == 2


@pytest.mark.parametrize("seed", seeds(2))
def test_commit_touches_only_the_next_prefix_slot(seed):
    """Independent of the reference: after the step, only slot prefix_end[b] of row b changed, in every
    layer and head, and it holds what slot prefix_end[b] + choice[b] held."""
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, 6, 10, layers=3, heads=2, layout="slot_major")
    before = clone(step)
    choice, _, _ = select_commit(**step, w=1.0, temperature=1.0, pad_id=0)
    assert torch.equal(step["prefix_end"], before["prefix_end"] + 1)
    for name in ("k_cache", "v_cache"):
        new, old = step[name], before[name]
        for b in range(6):
            dst, src = int(before["prefix_end"][b]), int(before["prefix_end"][b] + choice[b])
            assert torch.equal(new[:, b, :, dst], old[:, b, :, src]), f"seed {seed}: {name} row {b}"
            keep = torch.ones(new.shape[3], dtype=torch.bool)
            keep[dst] = False
            assert torch.equal(new[:, b, :, keep], old[:, b, :, keep]), f"seed {seed}: {name} row {b} other slots"


@pytest.mark.parametrize("seed", seeds(2))
def test_several_steps_in_a_row(seed):
    """prefix_end and finished carry over: five steps, fresh scores each time, same state as the reference."""
    gen = torch.Generator().manual_seed(seed)
    state = make_step(gen, 5, 4, eos="several", finished_frac=0.0)
    state["k_cache"] = torch.randn(2, 5, 2, 40, 16, generator=gen)
    state["v_cache"] = torch.randn(2, 5, 2, 40, 16, generator=gen)
    a, b = clone(state), clone(state)
    for t in range(5):
        fresh = make_step(gen, 5, 4)
        for s in (a, b):
            for name in ("top_logits", "top_ids", "rewards", "uniforms"):
                s[name] = fresh[name].clone()
        out = select_commit(**a, w=1.0, temperature=0.9, pad_id=0)
        ref = select_commit_reference(**b, w=1.0, temperature=0.9, pad_id=0)
        assert_same(a, b, out, ref, seed)
    assert torch.equal(a["prefix_end"], state["prefix_end"] + 5)


def _good():
    gen = torch.Generator().manual_seed(0)
    return {**make_step(gen, 3, 4), "w": 1.0, "temperature": 0.7, "pad_id": 0}


@pytest.mark.parametrize("change", [
    dict(top_ids=torch.zeros(3, 5, dtype=torch.long)),
    dict(rewards=torch.zeros(4, 4)),
    dict(uniforms=torch.rand(2, 4)),
    dict(finished=torch.zeros(3, dtype=torch.long)),
    dict(prefix_end=torch.zeros(4, dtype=torch.long)),
    dict(k_cache=torch.randn(2, 3, 2, 16)),
    dict(v_cache=torch.randn(2, 3, 2, 99, 16)),
], ids=["top-ids", "rewards", "uniforms", "finished-dtype", "prefix-end", "k-cache-4d", "v-cache-slots"])
def test_shape_mismatches_trip_the_asserts(change):
    """Arguments are validated once at the public API / engine allocation; per call the kernel keeps
    only cheap shape asserts (``_assert_shapes``), which these trip before anything is written."""
    args = {**_good(), **change}
    before = clone(args)
    with pytest.raises(AssertionError):
        select_commit(**args)
    for name in ("finished", "prefix_end", "k_cache", "v_cache"):
        assert torch.equal(args[name], before[name]), name


def test_custom_op_registration_and_compile():
    """Schema with the mutated arguments declared (opcheck fails on undeclared mutation) and a fake impl;
    torch.compile traces a step calling it as one graph, with the in-place effects kept."""
    gen = torch.Generator().manual_seed(0)
    step = make_step(gen, 4, 6)
    args = tuple(step[n] for n in ("top_logits", "top_ids", "rewards", "uniforms")) + (1.0, 0.8, step["finished"],
                                                                                      step["eos_ids"], 0)
    args += (step["k_cache"], step["v_cache"], step["prefix_end"])
    torch.library.opcheck(torch.ops.args_fast.select_commit.default, args, test_utils=("test_schema", "test_faketensor"))

    def tail(s):
        return select_commit(**s, w=1.0, temperature=0.8, pad_id=0)

    a, b = clone(step), clone(step)
    compiled = torch.compile(tail, backend="aot_eager", fullgraph=True)
    assert_same(a, b, compiled(a), select_commit_reference(**b, w=1.0, temperature=0.8, pad_id=0), seed=0)
