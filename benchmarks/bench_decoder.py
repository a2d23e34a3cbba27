"""CPU benchmark of the decoder core: `reference` vs `hf` vs the policy's own greedy `generate`.

Setting (issue 2): random-init Llama of ~25M parameters (policy and reward model of the same shape),
float32, prompt 256 tokens, 16 new tokens, k = 10, w = 1.0, B = 1 and B = 4.

    .venv/bin/python -m pytest -q benchmarks/bench_decoder.py --benchmark-only

writes ms per generated token and the ratios, all measured in that one run, to
benchmarks/results/bench_decoder_cpu.md (and .json).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

import pytest
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

import args_fast

PROMPT, NEW, K, W = 256, 16, 10, 1.0
RESULTS = Path(__file__).parent / "results"
COMMAND = ".venv/bin/python -m pytest -q benchmarks/bench_decoder.py --benchmark-only"
_rows: dict[tuple[str, int], float] = {}


def _config(**extra):
    return LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                       num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                       pad_token_id=0, eos_token_id=1, **extra)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    policy = LlamaForCausalLM(_config()).eval()
    reward = LlamaForSequenceClassification(_config(num_labels=1)).eval()
    return policy, reward


def _prompt(batch):
    g = torch.Generator().manual_seed(batch)
    return torch.randint(2, 8192, (batch, PROMPT), generator=g)


def _run(method, policy, reward, ids):
    with torch.no_grad():
        if method == "hf_greedy_generate":
            return policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0)
        return args_fast.generate(policy, reward, ids, k=K, w=W, max_new_tokens=NEW, eos_token_id=[],
                                  backend=method)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("method", ["hf_greedy_generate", "hf", "reference"])
def test_decoder(benchmark, models, method, batch):
    policy, reward = models
    ids = _prompt(batch)
    rounds = 1 if method == "reference" else 5
    benchmark.extra_info.update(method=method, batch=batch, prompt=PROMPT, new_tokens=NEW, k=K)
    benchmark.pedantic(_run, args=(method, policy, reward, ids), rounds=rounds,
                       warmup_rounds=1 if rounds > 1 else 0)
    _rows[(method, batch)] = statistics.median(benchmark.stats.stats.data) / NEW * 1000


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def teardown_module(module):
    if len(_rows) < 6:
        return
    params = sum(p.numel() for p in LlamaForCausalLM(_config()).parameters())
    meta = dict(machine=_cpu_name(), cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                model=f"random-init Llama {params / 1e6:.1f}M (policy and reward model)", dtype="float32",
                prompt=PROMPT, new_tokens=NEW, k=K, w=W, unit="ms per generated token (whole generate call / new_tokens)",
                command=COMMAND)
    lines = [
        "# Decoder core, CPU (issue 2 setting)", "",
        f"- machine: {meta['machine']}, {meta['cores']} cores, {meta['torch_threads']} torch threads; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
        f"- models: random-init Llama, {params / 1e6:.1f}M parameters each (policy and reward model), float32",
        f"- prompt {PROMPT} tokens, {NEW} new tokens, k = {K}, w = {W}; median over rounds "
        "(5 for hf and HF generate, 1 for reference); whole generate call / new tokens",
        f"- command: `{COMMAND}`", "",
        "| B | HF greedy generate ms/tok | hf ms/tok | reference ms/tok | reference / hf | hf / HF greedy |",
        "|---|---|---|---|---|---|"]
    for batch in (1, 4):
        hf, fast, ref = (_rows[(m, batch)] for m in ("hf_greedy_generate", "hf", "reference"))
        lines.append(f"| {batch} | {hf:.1f} | {fast:.1f} | {ref:.1f} | {ref / fast:.1f}x | {fast / hf:.2f}x |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_decoder_cpu.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "bench_decoder_cpu.json").write_text(json.dumps(
        {**meta, "ms_per_token": {f"{m}/B={b}": v for (m, b), v in _rows.items()}}, indent=1) + "\n")
    print("\n".join(lines))
