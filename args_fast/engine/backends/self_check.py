"""A short self-check of a fast static backend before ``auto`` stakes a user's run on it.

The fast kernels (Triton attention and select + commit, the csrc ops) are each tested against their
torch reference, but a new GPU, driver or Triton version can still break them. So the first time in
a process that ``auto`` would choose such a backend on a device, this runs it on a tiny random Llama
(grouped-query attention, the user's head dims) next to the same engine on the torch ops
(``static``): a few greedy and stochastic steps on a padded batch, in float32, CUDA-graph capture and
replay included where the engine uses graphs; tokens must be equal and rewards close. Then the
backend's attention op runs in the models' dtype against the float32 reference. Milliseconds on a
GPU; the result is kept per (backend, device, dtype, head dims).
"""
from __future__ import annotations

import torch

from .. import ops
from .base import Models, Options

RESULTS: dict[tuple, str | None] = {}
STEPS, BATCH, K = 6, 3, 4
# attention error allowed against the float32 reference, per input dtype (outputs are O(1)); a broken
# kernel is off by O(1), a correct one by a few ulps of its dtype
ATTENTION_ATOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _tiny_models(head_dims: tuple[int, int], device):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    models = []
    for cls, head_dim, seed, extra in ((LlamaForCausalLM, head_dims[0], 0, {}),
                                       (LlamaForSequenceClassification, head_dims[1], 1, {"num_labels": 1})):
        config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                             max_position_embeddings=64, pad_token_id=0, eos_token_id=1, **extra)
        torch.manual_seed(seed)
        model = cls(config).eval()
        with torch.no_grad():   # peaked attention and logits of order 1 (HF's std 0.02 init is nearly flat),
            for p in model.parameters():   # so a wrong attention or a wrong choice changes the tokens
                if p.dim() == 2:
                    p.normal_(0, 0.15)
            if hasattr(model, "score"):
                model.score.weight.normal_(0, 0.1)   # rewards spread like the top logits: both decide
        models.append(model.to(device))
    return models


def _run(engine, ids, mask, uniforms):
    engine.prefill(ids, mask, STEPS)
    tokens, rewards = [], []
    for t in range(STEPS):
        token, reward, _ = engine.step(None if uniforms is None else uniforms[t], last=t == STEPS - 1)
        tokens.append(token.clone())
        rewards.append(reward.clone())
    return torch.stack(tokens, 1), torch.stack(rewards, 1)


def _check(build, build_twin, device: torch.device, dtype: torch.dtype, head_dims: tuple[int, int]) -> str | None:
    # the twin runs the same models with the same graph setting, so only the ops differ
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        policy, reward = _tiny_models(head_dims, device)
        models = Models(policy, reward, "cached")
        options = Options(k=K, w=1.0, temperature=0.8, eos_ids=None, pad_id=0)
        fast, twin = build(models, options), build_twin(models, options)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(2, 128, (BATCH, 7), generator=g).to(device)
        mask = torch.ones_like(ids)
        mask[1, :3] = 0                               # left-padded rows
        mask[2, :1] = 0
        uniforms = torch.rand(STEPS, BATCH, K, generator=g).to(device)
        for mode in (None, uniforms):
            got, want = _run(fast, ids, mask, mode), _run(twin, ids, mask, mode)
            label = "greedy" if mode is None else "stochastic"
            if not torch.equal(got[0], want[0]):
                return f"{label} tokens {got[0].tolist()} differ from the torch ops' {want[0].tolist()}"
            if not torch.allclose(got[1], want[1], rtol=1e-3, atol=1e-3):
                return f"{label} rewards differ from the torch ops' by {float((got[1] - want[1]).abs().max()):.3g}"
        # the attention op in the models' own dtype
        q = torch.randn(BATCH, 4, K, head_dims[1], generator=g).to(device, dtype)
        cache = torch.randn(2, BATCH, 2, 40, head_dims[1], generator=g).to(device, dtype)
        start = torch.arange(BATCH, device=device) * 3              # ragged prefixes of 27-32 slots
        end = start + 27 + torch.arange(BATCH, device=device)
        out = fast.ops.attention(q, cache[0], cache[1], start, end, head_dims[1] ** -0.5)
        ref = ops.candidate_attention(q.float(), cache[0].float(), cache[1].float(), start, end)
        err = float((out.float() - ref).abs().max())
        if not err <= ATTENTION_ATOL.get(dtype, 3e-2):
            return f"the attention op in {dtype} is off the float32 reference by {err:.3g}"
    return None


def self_check(name: str, build, build_twin, device, dtype: torch.dtype, policy_head_dim: int, reward_head_dim: int
               ) -> tuple[str | None, bool]:
    """``(failure or None, ran_now)``: the self-check of backend ``name`` (its engine builder ``build``)
    against ``build_twin`` (the same engine on the torch ops) on ``device``, run once per process per
    (backend, device, dtype, head dims); ``ran_now`` is False when the answer was kept."""
    device = torch.device(device)
    key = (name, str(device), dtype, policy_head_dim, reward_head_dim)
    if key in RESULTS:
        return RESULTS[key], False
    try:
        failure = _check(build, build_twin, device, dtype, (policy_head_dim, reward_head_dim))
    except Exception as exc:   # a kernel that does not compile or launch is a failed check, not a crash
        failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    RESULTS[key] = failure
    return failure, True
