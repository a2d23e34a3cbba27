"""The fused Triton select + commit against its torch reference (args_fast.ops.select_candidates +
commit_slots_ + prefix_end += 1), through the Triton interpreter on CPU.

Every comparison is exact: the same choice, token, reward (nan where finished), finished flags, the
whole K and V cache tensors and prefix_end. Fresh random inputs each run; the seed is in failure
messages (ARGS_FAST_SEED=<n> replays one).
"""
import os

import pytest
import torch

from args_fast.kernels import select_commit, select_commit_reference


@pytest.fixture
def seed():
    return int(os.environ.get("ARGS_FAST_SEED", int.from_bytes(os.urandom(4), "little")))


def make_step(gen, batch, k, *, layers=2, heads=2, dim=16, ties=False, logit_dtype=torch.float32,
              id_dtype=torch.int64, eos="several", layout="contiguous", finished_frac=0.3):
    """One step's inputs. ``ties``: logits and rewards drawn from a few small integers, so equal scores
    (and equal Gumbel-perturbed scores, with repeated uniforms) are common."""
    if ties:
        logits = torch.randint(-2, 3, (batch, k), generator=gen).float()
        rewards = torch.randint(-1, 2, (batch, k), generator=gen).float()
    else:
        logits = torch.randn(batch, k, generator=gen) * 3
        rewards = torch.randn(batch, k, generator=gen)
    logits = logits.sort(-1, descending=True).values.to(logit_dtype)
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
        kc, vc = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    else:   # slot-major storage seen as (layers, B, H, S, D), and a V with padded rows
        kc = torch.randn(layers, batch, slots, heads, dim, generator=gen).transpose(2, 3)
        vc = torch.randn(shape[:-1] + (dim + 5,), generator=gen)[..., :dim]
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
    for name, x, y in zip(("choice", "token", "reward"), out, ref):
        assert x.dtype == y.dtype, f"seed {seed}: {name} dtype {x.dtype} != {y.dtype}"
        assert torch.equal(x.nan_to_num(-12345.0) if x.is_floating_point() else x,
                           y.nan_to_num(-12345.0) if y.is_floating_point() else y) and \
            torch.equal(x.isnan() if x.is_floating_point() else x, y.isnan() if y.is_floating_point() else y), \
            f"seed {seed}: {name} {x.tolist()} != reference {y.tolist()}"
    for name in ("finished", "prefix_end", "k_cache", "v_cache"):
        assert torch.equal(a[name], b[name]), f"seed {seed}: {name} differs from the reference after the step"


@pytest.mark.parametrize("k", [1, 3, 10, 40, 64])
@pytest.mark.parametrize("stochastic", [False, True])
def test_matches_reference(seed, k, stochastic):
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, 9, k, layout="slot_major" if k % 2 else "contiguous")
    a, b, out, ref = run_both(step, stochastic, w=1.7, temperature=0.7, pad_id=0)
    assert_same(a, b, out, ref, seed)


@pytest.mark.parametrize("stochastic", [False, True])
def test_ties_pick_the_first_maximum(seed, stochastic):
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, 16, 10, ties=True)
    a, b, out, ref = run_both(step, stochastic, w=1.0, temperature=1.0, pad_id=0)
    assert_same(a, b, out, ref, seed)
    scores = step["top_logits"].float() + step["rewards"].float()
    if not stochastic:   # independent of the reference: the first index among equal maxima
        first = (scores == scores.max(-1, keepdim=True).values).int().argmax(-1)
        assert torch.equal(out[0], first), f"seed {seed}"


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


@pytest.mark.parametrize("logit_dtype,id_dtype", [(torch.bfloat16, torch.int32), (torch.float16, torch.int64)])
def test_low_precision_logits_and_int32_ids(seed, logit_dtype, id_dtype):
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, 8, 10, logit_dtype=logit_dtype, id_dtype=id_dtype)
    step["rewards"] = step["rewards"].to(logit_dtype)
    for stochastic in (False, True):
        assert_same(*run_both(step, stochastic, w=2.0, temperature=0.5, pad_id=1), seed)


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


@pytest.mark.parametrize("change,error,match", [
    (dict(top_logits=torch.randn(3)), ValueError, "top_logits must be"),
    (dict(top_ids=torch.zeros(3, 5, dtype=torch.long)), ValueError, "top_ids must have shape"),
    (dict(top_ids=torch.zeros(3, 4)), TypeError, "top_ids dtype"),
    (dict(rewards=torch.zeros(3, 4, dtype=torch.long)), TypeError, "rewards dtype"),
    (dict(uniforms=torch.rand(2, 4)), ValueError, "uniforms must have shape"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(w=float("nan")), ValueError, "w must be"),
    (dict(finished=torch.zeros(3, dtype=torch.long)), ValueError, "finished must be"),
    (dict(eos_ids=torch.tensor([[1]])), ValueError, "eos_ids must be"),
    (dict(pad_id=1.0), TypeError, "pad_id must be"),
    (dict(prefix_end=torch.zeros(3)), ValueError, "prefix_end must be"),
    (dict(finished=torch.zeros(6, dtype=torch.bool)[::2]), ValueError, "finished must be contiguous"),
    (dict(k_cache=torch.randn(2, 3, 2, 16)), ValueError, "k_cache must be"),
    (dict(v_cache=torch.randn(2, 3, 2, 99, 16)), ValueError, "must agree"),
    (dict(rewards=[[0.0] * 4] * 3), TypeError, "rewards must be a torch.Tensor"),
])
def test_bad_inputs_name_the_argument(change, error, match):
    args = {**_good(), **change}
    with pytest.raises(error, match=match):
        select_commit(**args)


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
