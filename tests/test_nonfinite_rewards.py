"""A NaN or infinite candidate reward is an error naming the step and the rows, on every backend.

Before, a NaN won the reference's argmax (torch.argmax picks NaN) and turned every candidate's reward
NaN on the cached backends (masked attention still multiplies the NaN value by a zero weight), which
then silently decoded plain greedy; and it could not be told from the "row finished" NaN of .rewards.
"""
import math

import pytest
import torch

import args_fast
from args_fast.engine.backends import registry
from tiny_models import make_policy, make_reward, make_tokenizer, padded_prompts

BACKENDS = ("reference", "hf", "static", "static-triton", "static-csrc")


def text_reward(poison_step, poison_row, value=math.nan, rows=3):
    """Length reward; at step ``poison_step`` row ``poison_row``'s second candidate gets ``value``."""
    calls = []

    def reward(prompts, responses):   # B * k pairs per call, row-major
        calls.append(1)
        out = [0.1 * len(r) for r in responses]
        if len(calls) - 1 == poison_step:
            out[poison_row * (len(responses) // rows) + 1] = value
        return out
    return reward


@pytest.mark.parametrize("backend", ["reference", "hf"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_text_reward_nonfinite_is_an_error_naming_step_and_row(backend, value):
    policy = make_policy("llama", 91)
    ids, mask = padded_prompts([3, 5, 4], seed=92)
    with pytest.raises(ValueError, match=r"at step 2 \(0-based\) for batch rows \[1\]"):
        args_fast.generate(policy, text_reward(2, 1, value), ids, mask, k=4, max_new_tokens=5, eos_token_id=[],
                           tokenizer=make_tokenizer(), backend=backend)


def test_finished_rows_may_score_nan_candidates():
    """After EOS a row's candidates are still scored but unused: their rewards do not matter."""
    policy = make_policy("llama", 91)
    ids, mask = padded_prompts([3, 5, 4], seed=92)
    tok = make_tokenizer()
    free = args_fast.generate(policy, lambda p, r: [0.1 * len(x) for x in r], ids, mask, k=4, max_new_tokens=5,
                              eos_token_id=[], tokenizer=tok).sequences[:, ids.shape[1]:]
    eos = int(free[1, 0])   # row 1 stops at step 0
    if eos in free[[0, 2], :3].flatten().tolist():
        pytest.skip("setup: the EOS must stop row 1 only")
    out = args_fast.generate(policy, text_reward(2, 1), ids, mask, k=4, max_new_tokens=3, eos_token_id=[eos],
                             tokenizer=tok)
    assert out.rewards[1, 1:].isnan().all() and not out.rewards[[0, 2]].isnan().any()


def nan_token_models(head_dim=16):
    """A policy, and a reward model whose embedding row of one token is NaN: every candidate sequence
    containing that token (the policy's top choice for row 1 at the first step) scores NaN."""
    policy, reward = make_policy("llama", 93, head_dim=head_dim), make_reward("llama", 94, head_dim=head_dim)
    ids, mask = padded_prompts([4, 6], seed=95)
    with torch.no_grad():
        logits = policy(input_ids=ids, attention_mask=mask,
                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    poison = int(logits[1].argmax())
    if poison in ids[mask.bool()].tolist() or poison in logits[0].topk(3).indices.tolist():
        pytest.skip("setup: the poisoned token must be a row-1 candidate only")
    with torch.no_grad():
        reward.get_input_embeddings().weight[poison] = float("nan")
    return policy, reward, ids, mask


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reward_model_that_gives_nan_for_one_token_is_an_error(backend):
    policy, reward, ids, mask = nan_token_models()
    reason = registry.unavailable_reason(backend, registry.Models(policy, reward, "cached"),
                                         registry.Options(3, 1.0, 1.0, None, 0))
    if reason is not None:
        pytest.skip(reason)
    with pytest.raises(ValueError, match=r"NaN or infinite reward to a candidate at step 0 \(0-based\) for batch rows \[1\]"):
        args_fast.generate(policy, reward, ids, mask, k=3, max_new_tokens=4, eos_token_id=[], backend=backend)
