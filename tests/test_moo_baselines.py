"""The multi-objective baselines' building blocks (args_fast/training/baselines.py) against slow twins."""
import copy
import random

import pytest
import torch

from args_fast.training.baselines import base_weights, hypervolume_2d, interpolate_lora, mod_generate, parse_ric_prompt, ric_prompt, ric_targets
from tiny_models import make_model, padded_prompts


# --------------------------------------------------------------------------------------- hypervolume
def grid_hypervolume(points, reference, steps=400):
    """Slow twin: the fraction of a fine grid over the box that some point dominates."""
    hi_x = max([p[0] for p in points] + [reference[0]])
    hi_y = max([p[1] for p in points] + [reference[1]])
    if hi_x <= reference[0] or hi_y <= reference[1]:
        return 0.0
    dx, dy = (hi_x - reference[0]) / steps, (hi_y - reference[1]) / steps
    count = 0
    for i in range(steps):
        x = reference[0] + (i + 0.5) * dx
        for j in range(steps):
            y = reference[1] + (j + 0.5) * dy
            count += any(px >= x and py >= y for px, py in points)
    return count * dx * dy


def test_hypervolume_of_known_fronts():
    assert hypervolume_2d([(1, 1)], (0, 0)) == 1.0
    assert hypervolume_2d([(2, 1), (1, 2)], (0, 0)) == 3.0                # two boxes minus their overlap
    assert hypervolume_2d([(2, 1), (1, 2), (1, 1), (0.5, 0.5)], (0, 0)) == 3.0   # dominated points add nothing
    assert hypervolume_2d([(3, 1), (2, 2), (1, 3)], (0, 0)) == 6.0
    assert hypervolume_2d([(1, 1), (-1, 5)], (0, 0)) == 1.0               # below the reference: nothing
    assert hypervolume_2d([], (0, 0)) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_matches_a_grid_count(seed):
    rng = random.Random(seed)
    points = [(rng.uniform(-1, 3), rng.uniform(-1, 3)) for _ in range(rng.randint(1, 7))]
    reference = (rng.uniform(-1, 0.5), rng.uniform(-1, 0.5))
    assert hypervolume_2d(points, reference) == pytest.approx(grid_hypervolume(points, reference), rel=0.03, abs=0.02)


# --------------------------------------------------------------------------------------- RiC
@pytest.mark.parametrize("message, rewards", [("How are you?", [0.5, -1.25]), ("a <rm1> 3.00 trap", [2.0]),
                                               ("multi\nline", [0.0, 1.0, -0.01])])
def test_ric_prompt_round_trip(message, rewards):
    text = ric_prompt(message, rewards)
    assert parse_ric_prompt(text) == (message, [round(r, 2) for r in rewards])
    with pytest.raises(ValueError, match="no RiC reward tags"):
        parse_ric_prompt(message)


def test_ric_targets_follow_the_preference_map():
    lows, highs = [-1.0, 0.0], [1.0, 2.0]
    assert ric_targets([1.0, 0.0], lows, highs) == [1.0, 0.0]
    assert ric_targets([0.5, 0.5], lows, highs) == [1.0, 2.0]
    assert ric_targets([0.25, 0.75], lows, highs) == [0.0, 2.0]            # -1 + 2 * 0.25 * 2
    with pytest.raises(ValueError, match="sum to 1"):
        ric_targets([0.7, 0.7], lows, highs)


# --------------------------------------------------------------------------------------- Rewarded Soups
def adapters_for(model, names, rank, seed):
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        out_f, in_f = modules[name].weight.shape
        out[name] = (torch.randn(rank, in_f, generator=g), torch.randn(out_f, rank, generator=g) * 0.1, 2.0)
    return out


def merged(model, base, adapter):
    """Slow twin: a copy of the model with one adapter merged the plain way, W + s * B A."""
    m = copy.deepcopy(model)
    modules = dict(m.named_modules())
    with torch.no_grad():
        for name, (a, b, s) in adapter.items():
            modules[name].weight.copy_(base[name] + s * b @ a)
    return m


def test_interpolating_lora_weights_gives_each_policy_at_the_ends_and_is_linear():
    model = make_model("llama-gqa-hd16", "lm", 0)
    names = [n for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))]
    base = base_weights(model, names)
    first, second = adapters_for(model, names, 4, 1), adapters_for(model, names[:2], 2, 2)   # second: fewer layers
    ids, _ = padded_prompts([6], seed=3)
    want = {lam: None for lam in (0.0, 1.0)}
    want[1.0] = merged(model, base, first)(input_ids=ids).logits
    want[0.0] = merged(model, base, second)(input_ids=ids).logits
    for lam in (0.0, 1.0):
        interpolate_lora(model, base, [first, second], [lam, 1 - lam])
        torch.testing.assert_close(model(input_ids=ids).logits, want[lam], rtol=0, atol=1e-5)
    interpolate_lora(model, base, [first, second], [0.3, 0.7])
    modules = dict(model.named_modules())
    for name in names:
        expect = base[name] + 0.3 * 2.0 * first[name][1] @ first[name][0]
        if name in second:
            expect = expect + 0.7 * 2.0 * second[name][1] @ second[name][0]
        torch.testing.assert_close(modules[name].weight, expect, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="2 adapters but 1 lambdas"):
        interpolate_lora(model, base, [first, second], [1.0])


# --------------------------------------------------------------------------------------- MOD
def literal_mod(policies, lambdas, row, steps, eos):
    """Slow twin: one unpadded row, full forwards of every policy each step."""
    seq = row.clone()
    for _ in range(steps):
        with torch.no_grad():
            mixed = sum(lam * torch.log_softmax(p(input_ids=seq[None]).logits[0, -1].float(), -1)
                        for p, lam in zip(policies, lambdas) if lam)
        token = int(mixed.argmax())
        seq = torch.cat([seq, torch.tensor([token])])
        if token in eos:
            break
    return seq


@pytest.mark.parametrize("lambdas", [(1.0, 0.0), (0.0, 1.0), (0.4, 0.6)])
def test_mod_matches_full_forwards_of_the_mixture(lambdas):
    policies = [make_model("llama-gqa-hd16", "lm", s, peaked="weights", attn="eager") for s in (0, 1)]
    lengths = [5, 2, 7]
    ids, mask = padded_prompts(lengths, seed=4)
    eos = [7]
    out = mod_generate(policies, lambdas, ids, mask, max_new_tokens=6, eos_ids=eos, pad_id=0)
    for b, n in enumerate(lengths):
        want = literal_mod(policies, lambdas, ids[b, -n:], 6, eos)
        got = out[b, ids.shape[1]:ids.shape[1] + len(want) - n]
        assert got.tolist() == want[n:].tolist()
        assert (out[b, ids.shape[1] + len(want) - n:] == 0).all()     # pad after EOS
    with pytest.raises(ValueError, match="lambdas must be >= 0 and not all 0"):
        mod_generate(policies, (0.0, 0.0), ids, mask, max_new_tokens=2)
