"""Top-k order is defined (larger logit first, equal logits by lower token id, NaN above +inf) and
every top-k follows it, so every backend hands the same candidates in the same order to the same
uniforms. Before, torch.topk (reference, hf, static, static-triton) ordered ties arbitrarily while
the csrc top-k took the lower id, so with tied logits (common in bf16) the stochastic tokens of
static-csrc differed from the reference's for the same seed."""
import pytest
import torch

import args_fast
from args_fast.engine import ops
from args_fast.engine.backends import registry
from tiny_models import make_policy, make_reward, padded_prompts, seeds


def stable_topk(x, k):
    values, ids = torch.sort(x.float(), dim=-1, descending=True, stable=True)
    return values[:, :k], ids[:, :k]


def planted(seed, vocab, dtype):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, vocab, generator=g).to(dtype)
    x[0, : vocab // 2] = 2.5                                  # a long run of equal maxima
    x[1, 1::2] = x[1, 0::2][: vocab // 2]                       # every logit tied with a neighbour
    x[2] = x[2].round()                                        # few distinct values, ties at the k-th place
    x[3, [5 % vocab, vocab - 1]] = float("inf")
    x[3, [6 % vocab, 2]] = float("nan")
    x[4, :3] = torch.tensor([0.0, -0.0, 0.0]).to(dtype)
    x[4, 3:] = -1.0
    return x


@pytest.mark.parametrize("seed", seeds(2))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [7, 96, 4099])
def test_topk_logits_is_the_stable_descending_order(seed, dtype, vocab):
    x = planted(seed, vocab, dtype)
    for k in sorted({1, 2, 5, min(64, vocab), vocab}):
        want = stable_topk(x, k)
        for name, got in (("topk_logits", ops.topk_logits(x, k)), ("sync_free", ops.topk_logits_sync_free(x, k))):
            assert torch.equal(got[1], want[1]), f"seed {seed} {name} k={k}: {got[1]} != {want[1]}"
            assert torch.equal(got[0].nan_to_num(), want[0].nan_to_num()) and got[0].dtype == torch.float32


@pytest.mark.parametrize("seed", seeds(2))
def test_tie_free_rows_equal_torch_topk(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randperm(3000, generator=g) for _ in range(6)]).float() * 0.01 - 15.0   # distinct values
    values, ids = ops.topk_logits(x, 40)
    want = x.topk(40)
    assert torch.equal(ids, want.indices) and torch.equal(values, want.values)


def test_csrc_topk_follows_the_order():
    from args_fast.engine import csrc_ops
    if not csrc_ops.available():
        pytest.skip(csrc_ops.unavailable_reason())
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = planted(0, 512, dtype)
        x = torch.where(x.isnan(), torch.full_like(x, -5.0), x)   # the csrc top-k's NaN rule is tested in test_csrc_ops
        for k in (1, 3, 17, 64):
            got, want = csrc_ops.topk_logits(x, k), ops.topk_logits(x, k)
            assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), (dtype, k)


@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_every_backend_decodes_tied_logits_like_the_reference(mode):
    """A policy whose LM head rows come in identical pairs: every logit is tied with its neighbour's."""
    policy, reward = make_policy("llama", 96, head_dim=16), make_reward("llama", 97, head_dim=16)
    with torch.no_grad():
        policy.lm_head.weight[1::2] = policy.lm_head.weight[0::2]
    ids, mask = padded_prompts([4, 6, 5], seed=98)
    outs = {}
    for backend in ("reference", "hf", "static", "static-triton", "static-csrc"):
        if registry.unavailable_reason(backend, registry.Models(policy, reward, "cached"),
                                       registry.Options(5, 0.5, 1.0, None, 0)) is not None:
            continue
        outs[backend] = args_fast.generate(policy, reward, ids, mask, k=5, w=0.5, mode=mode, temperature=1.0,
                                           max_new_tokens=6, eos_token_id=[], backend=backend,
                                           generator=torch.Generator().manual_seed(0))
    ref = outs.pop("reference")
    assert outs, "no backend besides the reference could run"
    for backend, out in outs.items():
        assert torch.equal(out.sequences, ref.sequences), backend
        torch.testing.assert_close(out.rewards, ref.rewards, rtol=0, atol=1e-4)


def test_the_sync_free_top_k_compiles_to_the_same_order():
    """The compiled step traces topk_logits_sync_free into its graph: compiled, it keeps the order."""
    x = planted(0, 96, torch.float32)
    compiled = torch.compile(ops.topk_logits_sync_free, fullgraph=True, dynamic=False)
    for k in (1, 5, 96):
        got, want = compiled(x, k), stable_topk(x, k)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0].nan_to_num(), want[0].nan_to_num())
