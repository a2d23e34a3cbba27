"""w = 0 or k = 1 is plain greedy decoding: token for token what policy.generate(do_sample=False) gives."""
import pytest
import torch

import args_fast
from tiny_models import EOS, FAMILIES, PAD, make_policy, make_reward, padded_prompts


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", ["reference", "hf"])
@pytest.mark.parametrize("k,w", [(10, 0.0), (1, 3.0), (1, 0.0)])
def test_matches_hf_greedy(family, backend, k, w):
    policy, reward = make_policy(family, 31), make_reward(family, 32)
    ids, mask = padded_prompts([6, 3, 9], seed=33)
    out = args_fast.generate(policy, reward, ids, mask, k=k, w=w, max_new_tokens=12, backend=backend,
                             eos_token_id=EOS, pad_token_id=PAD)
    want = policy.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                           eos_token_id=EOS, pad_token_id=PAD)
    assert torch.equal(out.sequences, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_hf_greedy_unpadded_rows(family):
    policy, reward = make_policy(family, 41), make_reward(family, 42)
    ids, _ = padded_prompts([8], seed=43)
    # eos/pad from policy.generation_config on both sides
    out = args_fast.generate(policy, reward, ids, k=5, w=0.0, max_new_tokens=20)
    want = policy.generate(input_ids=ids, do_sample=False, max_new_tokens=20)
    assert torch.equal(out.sequences, want)
