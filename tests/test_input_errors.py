"""Hardening: inputs that used to give silent wrong results or tracebacks now get a clear error
naming the argument, or are handled (numpy / 0-d tensor scalars, padding ids outside the vocabulary)."""

import numpy as np
import pytest
import torch

import args_fast
from args_fast import ARGSDecoder
from tiny_models import make_model, make_policy, make_reward, make_tokenizer, padded_prompts


@pytest.fixture(scope="module")
def models():
    return make_policy("llama", 81, context=64), make_reward("llama", 82, context=64)


@pytest.fixture
def prompt():
    return padded_prompts([4, 6], seed=83)


def run(models, prompt, **kw):
    return args_fast.generate(*models, *prompt, **{"max_new_tokens": 3, "eos_token_id": [], **kw})


@pytest.mark.parametrize("kwargs", [
    dict(k=np.int64(4)), dict(k=torch.tensor(4)), dict(w=np.float32(1.0)), dict(w=torch.tensor(1.0)),
    dict(eos_token_id=np.int64(2)), dict(eos_token_id=torch.tensor([2, 5])), dict(eos_token_id=np.array([2, 5])),
    dict(pad_token_id=np.int32(1)), dict(max_new_tokens=np.int64(3)),
    dict(mode="stochastic", temperature=np.float64(0.7)), dict(mode="stochastic", temperature=torch.tensor(0.7)),
])
def test_numpy_and_tensor_scalars_are_numbers(models, prompt, kwargs):
    plain = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in kwargs.items()}
    g = lambda: torch.Generator().manual_seed(0)   # noqa: E731
    got = run(models, prompt, generator=g(), **kwargs)
    want = run(models, prompt, generator=g(), **plain)
    assert torch.equal(got.sequences, want.sequences)


@pytest.mark.parametrize("kwargs,match", [
    (dict(w=1e38), r"w must be a finite number in \[-1e\+30, 1e\+30\]"),
    (dict(w=-3e38), r"w must be a finite number in"),
    (dict(mode="stochastic", temperature=1e-39), r"temperature must be a finite number in \[1e-30, 1e\+30\]"),
    (dict(mode="stochastic", temperature=True), r"temperature must be a number"),
    (dict(temperature=True), r"temperature must be a number"),
    (dict(eos_token_id=True), r"eos_token_id must be an int \[0, 95\], got True"),
    (dict(pad_token_id=True), r"pad_token_id must be an int"),
    (dict(k=True), r"k must be an int \[1, 96\], got True"),
    (dict(k=np.float32(2.0)), r"k must be an int"),
    (dict(w=torch.tensor([1.0, 2.0])), r"w must be a number"),
    (dict(w=np.bool_(True)), r"w must be a number"),
    (dict(max_new_tokens=2.0), r"max_new_tokens must be an int >= 0"),
])
def test_values_float32_cannot_hold_and_booleans_are_refused(models, prompt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(models, prompt, **kwargs)


def test_attention_mask_and_generator_of_the_wrong_type(models, prompt):
    ids, mask = prompt
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor.*got list"):
        args_fast.generate(*models, ids, mask.tolist(), max_new_tokens=2)
    with pytest.raises(TypeError, match="generator must be a torch.Generator, a list of one per batch row, or None, got int"):
        args_fast.generate(*models, ids, mask, max_new_tokens=2, mode="stochastic", generator=0)


@pytest.mark.parametrize("backend", ["reference", "hf", "static"])
def test_padding_may_hold_ids_outside_the_vocabulary(models, prompt, backend):
    """Collators write -100 into padding: no model may see it, and the result is unchanged."""
    ids, mask = prompt
    dirty = ids.masked_fill(mask == 0, -100)
    want = args_fast.generate(*models, ids, mask, max_new_tokens=3, backend=backend)
    got = args_fast.generate(*models, dirty, mask, max_new_tokens=3, backend=backend)
    assert torch.equal(got.sequences[:, ids.shape[1]:], want.sequences[:, ids.shape[1]:])
    assert torch.equal(got.sequences[:, :ids.shape[1]][mask.bool()], ids[mask.bool()])


def test_a_module_that_is_not_a_reward_model_is_refused_clearly(models):
    policy, _ = models
    with pytest.raises(TypeError, match="reward_model is a Linear module but neither a Hugging Face"):
        ARGSDecoder(policy, torch.nn.Linear(2, 2))


class LengthReward(torch.nn.Module):
    """A text reward written as a module: forward(prompts, responses)."""

    def forward(self, prompts, responses):
        return torch.tensor([float(len(r)) for r in responses])


def test_a_module_text_reward_is_a_text_reward(models, prompt):
    policy, _ = models
    tok = make_tokenizer()
    out = args_fast.generate(policy, LengthReward(), *prompt, max_new_tokens=3, tokenizer=tok, eos_token_id=[])
    fn = lambda p, r: [float(len(x)) for x in r]   # noqa: E731
    want = args_fast.generate(policy, fn, *prompt, max_new_tokens=3, tokenizer=tok, eos_token_id=[])
    assert torch.equal(out.sequences, want.sequences)


@pytest.mark.parametrize("returned,error,match", [
    (None, TypeError, "must return 8 numbers.*got NoneType"),
    ({"a": 1.0}, TypeError, "got dict"),
    ("12345678", TypeError, "got str"),
    (["1.0"] * 8, TypeError, "got a str among them"),
    ([1.0] * 7, ValueError, r"got shape \(7,\)"),
    (np.ones((8, 1)), ValueError, r"got shape \(8, 1\)"),
])
def test_text_reward_return_values_are_checked(models, prompt, returned, error, match):
    policy, _ = models
    with pytest.raises(error, match=match):
        args_fast.generate(policy, lambda p, r: returned, *prompt, k=4, max_new_tokens=2, tokenizer=make_tokenizer())


def test_text_reward_may_return_numpy_or_tensors(models, prompt):
    policy, _ = models
    tok = make_tokenizer()
    outs = [args_fast.generate(policy, fn, *prompt, k=4, max_new_tokens=3, tokenizer=tok, eos_token_id=[]).sequences
            for fn in (lambda p, r: [len(x) * 0.1 for x in r], lambda p, r: np.array([len(x) * 0.1 for x in r]),
                       lambda p, r: torch.tensor([len(x) * 0.1 for x in r]))]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_sliding_window_models_are_refused_where_the_window_would_be_ignored():
    policy = make_model("mistral", "lm", 0, sliding_window=8)
    reward = make_model("mistral", "reward", 1, sliding_window=8)
    ids, mask = padded_prompts([6, 4], seed=1)
    for backend in ("hf", "static"):
        with pytest.raises(ValueError, match="sliding attention window of 8 tokens, which backend"):
            args_fast.generate(policy, reward, ids, mask, k=2, max_new_tokens=6, backend=backend)
        # within the window the backends agree with the reference
        short = args_fast.generate(policy, reward, ids, mask, k=2, max_new_tokens=2, backend=backend)
        ref = args_fast.generate(policy, reward, ids, mask, k=2, max_new_tokens=2, backend="reference")
        assert torch.equal(short.sequences, ref.sequences)
    # the reference backend runs the models' own (windowed) attention: it equals HF generate at k = 1
    out = args_fast.generate(policy, reward, ids, mask, k=1, max_new_tokens=6, backend="reference", eos_token_id=[])
    want = policy.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6, min_new_tokens=6,
                           pad_token_id=1)
    assert torch.equal(out.sequences, want)
