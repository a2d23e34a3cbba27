"""The C++/CUDA ops of csrc/ (args_fast.csrc_ops) against the torch references in args_fast.ops.

CPU always (when the extension is built); the same tests run on CUDA when the extension has its CUDA
kernels and a GPU is present. Every comparison is exact. The random trials draw from
``tiny_models.seeds`` (fixed by default; ``ARGS_FAST_TEST_SEED=<int>`` or ``=random`` for fresh
ones); the seed is in their failure messages. Unlike the Triton kernels, the bindings validate every
argument on each call, so the bad-input tests here expect errors naming the argument.
"""
import pytest
import torch

from args_fast.engine import csrc_ops
from args_fast.engine.ops import select_commit as select_commit_reference
from tiny_models import seeds

pytestmark = pytest.mark.skipif(not csrc_ops.available(), reason=csrc_ops.unavailable_reason())

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and csrc_ops.cuda_available()), reason="no GPU or extension built without CUDA"))]


def make_step(gen, device, *, B, k, L, H, S, D, cache_dtype, logit_dtype=torch.float32, stochastic, eos, Dv=None):
    """Random inputs of one ARGS step; eos ids drawn from the candidates so rows do hit them."""
    top_ids = torch.randint(0, 50_000, (B, k), generator=gen)
    eos_ids = None
    if eos:
        eos_ids = torch.unique(top_ids.flatten()[torch.randint(0, B * k, (eos,), generator=gen)])
    step = dict(
        top_logits=(torch.randn(B, k, generator=gen) * 3).to(logit_dtype),
        top_ids=top_ids,
        rewards=torch.randn(B, k, generator=gen),
        uniforms=torch.rand(B, k, generator=gen) if stochastic else None,
        w=float(torch.rand(1, generator=gen)) * 2,
        temperature=0.5 + float(torch.rand(1, generator=gen)),
        finished=torch.rand(B, generator=gen) < 0.3,
        eos_ids=eos_ids,
        pad_id=7,
        k_cache=torch.randn(L, B, H, S, D, generator=gen).to(cache_dtype),
        v_cache=torch.randn(L, B, H, S, Dv or D, generator=gen).to(cache_dtype),
        prefix_end=torch.randint(0, S - k + 1, (B,), generator=gen),  # ragged
    )
    return {n: v.to(device) if isinstance(v, torch.Tensor) else v for n, v in step.items()}


def clone(step):
    return {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in step.items()}


def reference(s):
    """args_fast.engine.ops.select_commit (select_candidates + commit_slots_ + prefix_end += 1) on a copy;
    returns (outputs, mutated state)."""
    s = clone(s)
    out = select_commit_reference(**s)
    return out, s


def run_ours(s):
    s = clone(s)
    out = csrc_ops.select_commit(**s)
    return out, s


def assert_step_matches(step, what=""):
    (rc, rt, rr), ref = reference(step)
    (c, t, r), got = run_ours(step)
    assert torch.equal(c, rc) and torch.equal(t, rt), what
    torch.testing.assert_close(r, rr, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")
    for name in ("finished", "prefix_end", "k_cache", "v_cache"):  # whole tensors: nothing else touched
        assert torch.equal(got[name], ref[name]), f"{what}: {name}"


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stochastic", [False, True])
def test_select_commit_matches_reference(seed, device, stochastic):
    gen = torch.Generator().manual_seed(seed)
    for trial in range(24):
        r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
        k = r(1, 64)
        step = make_step(gen, device, B=r(1, 9), k=k, L=r(1, 4), H=r(1, 8), S=k + r(0, 300 - k),
                         D=[64, 128][trial % 2], cache_dtype=[torch.float32, torch.bfloat16][(trial // 2) % 2],
                         logit_dtype=[torch.float32, torch.bfloat16, torch.float16][trial % 3],
                         stochastic=stochastic, eos=[0, 1, 3][trial % 3])
        assert_step_matches(step, f"seed {seed}, trial {trial}")


@pytest.mark.parametrize("seed", seeds(2))
@pytest.mark.parametrize("device", DEVICES)
def test_select_commit_moves_exactly_the_winner(seed, device):
    """Independent of the reference: only slot prefix_end[b] changes, and it gets slot prefix_end[b]+choice[b]."""
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, device, B=5, k=6, L=3, H=2, S=40, D=64, cache_dtype=torch.float32, stochastic=True, eos=0)
    before = clone(step)
    (choice, _, _), after = run_ours(step)
    for name in ("k_cache", "v_cache"):
        want = before[name].clone()
        for b in range(5):
            p, c = int(before["prefix_end"][b]), int(choice[b])
            want[:, b, :, p] = before[name][:, b, :, p + c]
        assert torch.equal(after[name], want), f"seed {seed}: {name}"
    assert torch.equal(after["prefix_end"], before["prefix_end"] + 1), f"seed {seed}"


@pytest.mark.parametrize("seed", seeds(2))
@pytest.mark.parametrize("device", DEVICES)
def test_select_commit_strided_caches_and_value_dim(seed, device):
    """Caches that are views (padded head dim, sliced slots) and a v_cache with its own D."""
    gen = torch.Generator().manual_seed(seed)
    step = make_step(gen, device, B=4, k=5, L=2, H=3, S=30, D=64, Dv=96, cache_dtype=torch.bfloat16,
                     stochastic=False, eos=2)
    big = torch.randn(2, 4, 3, 50, 80, generator=gen).to(device, torch.bfloat16)
    step["k_cache"] = big[:, :, :, 10:40, :64]  # strides of the big tensor, last dim contiguous
    before, big_before = clone(step), big.clone()
    choice, _, _ = csrc_ops.select_commit(**step)  # in place, on the view itself
    for name in ("k_cache", "v_cache"):
        want = before[name].clone()
        for b in range(4):
            p, c = int(before["prefix_end"][b]), int(choice[b])
            want[:, b, :, p] = before[name][:, b, :, p + c]
        assert torch.equal(step[name], want), f"seed {seed}: {name}"
    big[:, :, :, 10:40, :64] = 0  # the rest of `big` must not change
    big_before[:, :, :, 10:40, :64] = 0
    assert torch.equal(big, big_before), f"seed {seed}"


@pytest.mark.parametrize("device", DEVICES)
def test_select_commit_ties_nan_and_all_finished(device):
    gen = torch.Generator().manual_seed(3)
    step = make_step(gen, device, B=3, k=8, L=1, H=1, S=16, D=64, cache_dtype=torch.float32, stochastic=False, eos=0)
    step["top_logits"] = torch.tensor([[1.0] * 8, [0.0, 2.0, float("nan"), 5.0, float("nan"), 0, 0, 0],
                                       [-float("inf")] * 8], device=device)
    step["rewards"] = torch.zeros(3, 8, device=device)
    step["finished"] = torch.tensor([True, True, False], device=device)
    assert_step_matches(step)
    (c, t, r), _ = run_ours(step)
    assert c.tolist() == [0, 2, 0]  # first max on ties, NaN wins like torch.argmax
    assert t[:2].tolist() == [7, 7] and torch.isnan(r[:2]).all()


def test_select_commit_bad_inputs_raise_naming_the_argument():
    gen = torch.Generator().manual_seed(5)
    good = make_step(gen, "cpu", B=2, k=4, L=1, H=2, S=12, D=64, cache_dtype=torch.float32, stochastic=True, eos=1)
    cases = [
        (TypeError, "top_ids", dict(top_ids=good["top_ids"].int())),
        (ValueError, "rewards", dict(rewards=good["rewards"][:, :3])),
        (ValueError, "uniforms", dict(uniforms=good["uniforms"][:1])),
        (ValueError, "temperature", dict(temperature=0.0)),
        (TypeError, "finished", dict(finished=good["finished"].long())),
        (TypeError, "prefix_end", dict(prefix_end=good["prefix_end"].int())),
        (ValueError, "prefix_end\\[1\\] = 9", dict(prefix_end=torch.tensor([0, 9]))),
        (ValueError, "prefix_end\\[0\\] = -1", dict(prefix_end=torch.tensor([-1, 0]))),
        (ValueError, "k_cache", dict(k_cache=good["k_cache"][:, :1])),
        (ValueError, "v_cache", dict(v_cache=good["v_cache"].transpose(3, 4))),
        (ValueError, "k_cache and v_cache", dict(v_cache=good["v_cache"][:, :, :1])),
        (TypeError, "k_cache", dict(k_cache=good["k_cache"].long())),
        (TypeError, "eos_ids", dict(eos_ids=good["eos_ids"].int())),
        (ValueError, "w must be finite", dict(w=float("nan"))),
    ]
    for exc, match, change in cases:
        step = clone(good)
        step.update(change)
        before = clone(step)
        with pytest.raises(exc, match=match):
            csrc_ops.select_commit(**step)
        for name in ("finished", "prefix_end", "k_cache", "v_cache"):  # rejected before any write
            assert torch.equal(step[name], before[name])


def stable_topk(x, k):
    """Reference for the tie order: stable descending sort (NaN first, equal values by lower index)."""
    values, indices = torch.sort(x.float(), dim=-1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("device", DEVICES)
def test_topk_matches_torch_topk_without_ties(seed, device):
    gen = torch.Generator().manual_seed(seed)
    for trial in range(30):
        B = int(torch.randint(1, 10, (1,), generator=gen))
        V = int(torch.randint(1, 50_001, (1,), generator=gen)) | 1  # odd sizes
        k = int(torch.randint(1, min(csrc_ops.topk_max_k(), V) + 1, (1,), generator=gen))
        # distinct values: a permutation of 0..V-1, shifted and scaled exactly in fp32
        x = torch.stack([torch.randperm(V, generator=gen) for _ in range(B)]).float().sub_(V / 2).div_(8)
        x = x.to(device)
        values, indices = csrc_ops.topk_logits(x, k)
        ref_values, ref_indices = torch.topk(x, k)
        assert values.dtype == torch.float32 and indices.dtype == torch.int64
        assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices), (seed, B, V, k)


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_topk_ties_go_to_the_lower_index(seed, device, dtype):
    gen = torch.Generator().manual_seed(seed)
    for V, k in [(64, 64), (1001, 17), (9000, 64), (50_001, 33), (300_001, 64)]:
        x = torch.randint(-6, 6, (3, V), generator=gen).to(dtype) / 4  # heavy ties
        x[1] = torch.randn(V, generator=gen).to(dtype)  # bf16/fp16 rounding: ties of the low precision kind
        x = x.to(device)
        values, indices = csrc_ops.topk_logits(x, k)
        ref_values, ref_indices = stable_topk(x, k)
        assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices), (seed, V, k)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_special_values_and_views(device):
    x = torch.tensor([[0.0, -0.0, float("nan"), 1.0, float("inf"), -float("inf"), float("nan"), 1.0]], device=device)
    values, indices = csrc_ops.topk_logits(x, 8)
    assert indices.tolist() == [[2, 6, 4, 3, 7, 0, 1, 5]]  # NaN above inf, -0 == +0, lower index first
    assert torch.equal(values.isnan(), torch.tensor([[True, True] + [False] * 6], device=device))
    gen = torch.Generator().manual_seed(0)
    seq = torch.randn(3, 5, 7001, generator=gen).to(device)
    for view in (seq[:, -1], seq[:, 2, ::2]):  # row-strided and column-strided
        assert all(torch.equal(a, b) for a, b in zip(csrc_ops.topk_logits(view, 40), stable_topk(view, 40)))


def test_topk_max_k_and_bad_inputs():
    kmax = csrc_ops.topk_max_k()   # csrc/kernels.h kTopkMaxK: the largest k taken, and no larger
    assert kmax >= 1 and csrc_ops.topk_logits(torch.randn(2, kmax + 36), kmax)[1].shape == (2, kmax)
    x = torch.randn(2, 30)
    for exc, match, args in [(ValueError, f"k must be in \\[1, min\\({kmax}, V\\)\\] = \\[1, 30\\]", (x, 31)),
                             (ValueError, "k must be", (torch.randn(2, kmax + 36), kmax + 1)),
                             (ValueError, "k must be", (x, 0)),
                             (ValueError, "logits must have shape", (x[0], 3)),
                             (TypeError, "logits must be float32", (x.long(), 3))]:
        with pytest.raises(exc, match=match):
            csrc_ops.topk_logits(*args)


def test_ops_pass_opcheck():
    gen = torch.Generator().manual_seed(8)
    # opcheck calls the op several times on the same, mutated, inputs and compares the outputs: without eos
    # ids they do not depend on the mutated state (the eos path is compiled in test_decode_step_compiles_whole)
    step = make_step(gen, "cpu", B=3, k=4, L=2, H=2, S=40, D=64, cache_dtype=torch.float32, stochastic=True, eos=0)
    step["prefix_end"].clamp_(max=10)
    step["finished"].zero_()  # opcheck's output comparison does not treat nan (finished rows) as equal
    torch.library.opcheck(torch.ops.args_fast.select_commit_cpp.default, tuple(step.values()))
    torch.library.opcheck(torch.ops.args_fast.topk_logits.default, (torch.randn(3, 500), 9))


def test_decode_step_compiles_whole():
    """topk + select_commit in one torch.compile(fullgraph=True) graph, mutations applied like eager."""
    def decode_step(logits, rewards, uniforms, finished, eos_ids, k_cache, v_cache, prefix_end):
        top_logits, top_ids = torch.ops.args_fast.topk_logits(logits, 4)
        return torch.ops.args_fast.select_commit_cpp(top_logits, top_ids, rewards, uniforms, 0.5, 0.7, finished,
                                                     eos_ids, 0, k_cache, v_cache, prefix_end)

    gen = torch.Generator().manual_seed(21)
    state = dict(logits=torch.randn(3, 1000, generator=gen), rewards=torch.randn(3, 4, generator=gen),
                 uniforms=torch.rand(3, 4, generator=gen), finished=torch.tensor([False, True, False]),
                 eos_ids=torch.tensor([5, 17]), k_cache=torch.randn(2, 3, 2, 30, 64, generator=gen),
                 v_cache=torch.randn(2, 3, 2, 30, 64, generator=gen), prefix_end=torch.tensor([3, 0, 11]))
    eager_state = clone(state)
    eager = decode_step(**eager_state)
    torch._dynamo.reset()
    compiled_step = torch.compile(decode_step, fullgraph=True, backend="aot_eager")
    got = compiled_step(**state)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    for name in ("finished", "k_cache", "v_cache", "prefix_end"):
        assert torch.equal(state[name], eager_state[name]), name


@pytest.mark.skipif(not (torch.cuda.is_available() and csrc_ops.cuda_available()), reason="needs a GPU")
def test_cuda_graph_replays_the_step():
    gen = torch.Generator().manual_seed(31)
    step = make_step(gen, "cuda", B=4, k=8, L=2, H=2, S=64, D=128, cache_dtype=torch.bfloat16, stochastic=True, eos=2)
    step["prefix_end"].zero_()
    static = clone(step)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = csrc_ops.select_commit(**static)
    ref = clone(step)
    for _ in range(3):  # each replay advances prefix_end by one, like eager calls
        graph.replay()
        want = csrc_ops.select_commit(**ref)
        torch.cuda.synchronize()
        for a, b in zip(out, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        for name in ("finished", "prefix_end", "k_cache", "v_cache"):
            assert torch.equal(static[name], ref[name])
