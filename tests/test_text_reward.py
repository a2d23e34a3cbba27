"""The text reward path: rewards that read decoded text (callables, or models with their own tokenizer)."""
import pytest
import torch

import args_fast
from args_fast.engine.ops import select_candidates
from tiny_models import make_policy, make_reward, make_tokenizer, padded_prompts


def vowel_reward(prompts, responses):
    return [sum(ch in "aeiou" for ch in r) - 0.1 * len(r) for r in responses]


def literal_text_args(policy, tokenizer, reward_fn, ids, mask, k, w, steps):
    """ARGS written out for one row at a time with full forwards and no caches at all."""
    outs = []
    for b in range(ids.shape[0]):
        row = ids[b, mask[b].bool()]
        prompt = tokenizer.decode(row, skip_special_tokens=True)
        response = []
        for _ in range(steps):
            logits = policy(input_ids=torch.cat([row, torch.tensor(response, dtype=torch.long)])[None]).logits[0, -1]
            top_logits, top_ids = logits.topk(k)
            texts = [tokenizer.decode(response + [c], skip_special_tokens=True) for c in top_ids.tolist()]
            rewards = torch.tensor(reward_fn([prompt] * k, texts), dtype=torch.float32)
            _, token, _, _ = select_candidates(top_logits[None], top_ids[None], rewards[None], w, None, 1.0,
                                               torch.zeros(1, dtype=torch.bool), None, 0)
            response.append(token.item())
        outs.append(response)
    return torch.tensor(outs)


@pytest.mark.parametrize("backend", ["reference", "hf"])
def test_callable_reward_matches_literal_loop(backend):
    policy, tok = make_policy("llama", 81), make_tokenizer()
    ids, mask = padded_prompts([5, 8], seed=82)
    calls = []

    def reward(prompts, responses):
        calls.append(len(responses))
        return vowel_reward(prompts, responses)

    out = args_fast.generate(policy, reward, ids, mask, k=5, w=2.0, max_new_tokens=6, tokenizer=tok,
                             eos_token_id=[], backend=backend)
    assert calls == [2 * 5] * 6          # all B*k candidates in one call per step
    want = literal_text_args(policy, tok, vowel_reward, ids, mask, k=5, w=2.0, steps=6)
    assert torch.equal(out.sequences[:, ids.shape[1]:], want)


def test_reward_model_with_own_tokenizer():
    """A sequence-classification reward with another tokenizer goes through text."""
    policy, tok = make_policy("llama", 83), make_tokenizer()
    reward = make_reward("gpt2", 84)
    ids, mask = padded_prompts([4, 7], seed=85)
    out = args_fast.generate(policy, reward, ids, mask, k=3, w=1.0, max_new_tokens=4, tokenizer=tok,
                             reward_tokenizer=tok, eos_token_id=None)
    assert out.sequences.shape == (2, 7 + 4) and not out.rewards.isnan().any()


def test_reward_length_mismatch_is_an_error():
    policy, tok = make_policy("llama", 86), make_tokenizer()
    ids, mask = padded_prompts([3], seed=87)
    with pytest.raises(ValueError, match="the reward callable must return"):
        args_fast.generate(policy, lambda p, r: [0.0], ids, mask, k=3, max_new_tokens=2, tokenizer=tok)


def test_generate_text():
    policy, reward, tok = make_policy("llama", 88), make_reward("llama", 89), make_tokenizer()
    decoder = args_fast.ARGSDecoder(policy, reward, k=4, w=1.0, max_new_tokens=5, eos_token_id=None)
    texts = decoder.generate_text(["hello there", "hi"], tok)
    assert len(texts) == 2 and all(isinstance(t, str) and len(t) > 0 for t in texts)
    with pytest.raises(ValueError, match="prompts must be"):
        decoder.generate_text("hello", tok)
