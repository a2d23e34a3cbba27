"""One ARGSDecoder called from several threads: calls run one at a time and each gets its own answer."""
import threading

import pytest
import torch

from args_fast import ARGSDecoder
from tiny_models import make_policy, make_reward, padded_prompts


@pytest.mark.parametrize("backend", ["hf", "static"])
def test_concurrent_calls_equal_sequential_ones(backend):
    policy, reward = make_policy("llama", seed=5, attn="eager"), make_reward("llama", seed=6, attn="eager")
    decoder = ARGSDecoder(policy, reward, k=4, w=1.0, mode="stochastic", max_new_tokens=6, eos_token_id=[],
                          backend=backend)
    jobs = [(padded_prompts(lengths, seed=i), i) for i, lengths in enumerate(([3, 5], [7], [2, 4, 6], [5, 5]))]

    def run(prompt, seed):
        return decoder.generate(*prompt, generator=torch.Generator().manual_seed(seed)).sequences

    want = [run(p, s) for p, s in jobs]
    got, errors = [None] * len(jobs), []

    def worker(i):
        try:
            for _ in range(2):
                got[i] = run(*jobs[i])
        except Exception as exc:   # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for a, b in zip(got, want):
        assert torch.equal(a, b)
