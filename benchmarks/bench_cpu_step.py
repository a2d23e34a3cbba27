"""CPU benchmark of one ARGS step on the embedded default models: eager, static and the compiled step,
against Hugging Face greedy ``generate``, side by side in one run (pytest-benchmark).

    make bench                                    # the default grid; results in $ARGS_FAST_BENCH_OUT
    ARGS_FAST_BENCH_GRID=quick make bench         # the headline cell only (float32 and bfloat16)
    ARGS_FAST_BENCH_GRID=full make bench          # P {64,256,1024} x B {1,4} x k {1,10,40} x dtypes (hours)

Models: SmolLM2-135M-Instruct (``load_default_policy``) and our reward head on its backbone (the fused
step: one policy pass of the k candidates per token); "unfused" rows use the same reward model with its
own copy of the backbone (a separate 135M reward model: a policy decode plus a reward pass of the k
candidates per token). Prompts: random ids of exactly P tokens, T new tokens, no early stop, w = 1.

Rows (a cell is one (dtype, P, B, k); every row of a cell runs in this process, one after the other):

* ``hf-generate``: ``policy.generate`` greedy (the baseline every ratio is to);
* ``hf-generate-static-compiled``: ``generate`` with ``cache_implementation="static"`` and its
  ``torch.compile``, where transformers compiles it here (else the row says why not);
* ``greedy-static`` / ``greedy-compiled``: the policy's plain greedy decode through our static engine
  (no reward), eager and compiled;
* ``fused-hf`` / ``fused-static`` / ``fused-compiled``: ARGS with the reward head (backends ``hf``,
  ``static``, ``static-compiled``);
* ``unfused-hf`` / ``unfused-compiled``: ARGS with the separate reward model;
* ``reference`` (one small cell): the literal oracle.

Per row: median ms per new token over ``ARGS_FAST_BENCH_ROUNDS`` (default 3) whole ``generate`` calls
(prefill included, divided by T), tokens/s over the batch, the first call's seconds (which includes
compiling a compiled row's graph; Inductor's on-disk cache may make it shorter than a cold compile),
the process's peak RSS after the row, and the ratio to the weight-read floor (bytes of the weights read
per token divided by the read bandwidth measured at the start of the run). The header records the CPU
model, whether it has native bf16 (AMX / AVX512-BF16), the flags, torch / transformers versions.
Results: ``$ARGS_FAST_BENCH_OUT/bench_cpu_step.{md,json}`` (default /tmp/args_fast_bench), rewritten
after every row, so a cut run keeps what it measured. Run it on a quiet machine.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers

import args_fast
from args_fast import default_models
from args_fast.engine.backends.static_engine import build_static_engine
from args_fast.loading import weight_bytes

OUT = Path(os.environ.get("ARGS_FAST_BENCH_OUT", "/tmp/args_fast_bench"))
GRID = os.environ.get("ARGS_FAST_BENCH_GRID", "default")
ROUNDS = int(os.environ.get("ARGS_FAST_BENCH_ROUNDS", "3"))
NEW, W = 64, 1.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ALL_ROWS = ("hf-generate", "hf-generate-static-compiled", "greedy-static", "greedy-compiled", "fused-hf",
            "fused-static", "fused-compiled", "unfused-hf", "unfused-compiled")
SCALING_ROWS = ("hf-generate", "fused-hf", "fused-compiled")


def cells() -> list[tuple[str, int, int, int, tuple[str, ...]]]:
    """(dtype, P, B, k, rows) of the chosen grid."""
    head = [(d, 256, 1, 10, ALL_ROWS) for d in DTYPES]
    if GRID == "quick":
        return head
    if GRID == "full":
        return [(d, p, b, k, ALL_ROWS) for d in DTYPES for p in (64, 256, 1024) for b in (1, 4) for k in (1, 10, 40)]
    if GRID != "default":
        raise ValueError(f"ARGS_FAST_BENCH_GRID must be quick, default or full, got {GRID!r}")
    scaling = [("float32", 256, 1, k, SCALING_ROWS) for k in (1, 40)] + [("float32", 256, 4, 10, SCALING_ROWS)]
    scaling += [("float32", p, 1, 10, SCALING_ROWS) for p in (64, 1024)]
    scaling += [("bfloat16", 256, 1, 40, SCALING_ROWS), ("bfloat16", 256, 4, 10, SCALING_ROWS)]
    return head + scaling + [("float32", 64, 1, 10, ("reference",))]


# ------------------------------------------------------------------------------------ the machine
def cpu_info() -> dict:
    model, flags = platform.processor(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model.strip():
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    native = sorted(f for f in flags if f in ("amx_bf16", "avx512_bf16", "amx_tile", "avx512f", "avx2", "fma"))
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "native_bf16": any(f in flags for f in ("amx_bf16", "avx512_bf16")), "relevant_flags": native,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform()}


def read_bandwidth() -> float:
    """Bytes/s of reading a 256 MB float32 tensor (a sum: one read, no write), median of 5."""
    x = torch.ones(64 * 1024 * 1024)
    x.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - start)
    return x.nbytes / statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------ the rows
_models: dict = {}


def models(dtype: str):
    """(policy, tokenizer, shared-backbone reward, separate reward) in ``dtype``, loaded once."""
    if dtype not in _models:
        policy, tokenizer = default_models.load_default_policy(dtype=DTYPES[dtype])
        shared = default_models.load_default_reward(dtype=DTYPES[dtype], policy=policy)
        separate = default_models.load_default_reward(dtype=DTYPES[dtype])
        _models.clear()   # one dtype at a time: the memory of the other is freed
        _models[dtype] = policy, tokenizer, shared, separate
    return _models[dtype]


def prompt(batch: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(batch * 1000 + length))


def make_run(row: str, dtype: str, k: int):
    """(callable ids -> None running one whole request of NEW tokens, bytes of weights read per token)."""
    policy, tokenizer, shared, separate = models(dtype)
    policy_bytes = weight_bytes(policy) - policy.get_input_embeddings().weight.nbytes * (
        0 if policy.config.tie_word_embeddings else 1)   # an untied embedding table is gathered, not read
    if row.startswith("hf-generate"):
        kwargs = dict(do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=tokenizer.pad_token_id)
        if row == "hf-generate-static-compiled":
            kwargs.update(cache_implementation="static")   # transformers compiles the forward of a static cache

        def run(ids):
            policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        return run, policy_bytes
    if row.startswith("greedy-"):
        ops = "static-compiled" if row == "greedy-compiled" else "static"
        engine = build_static_engine(ops, policy, None, k=1, w=0.0, temperature=1.0, eos_ids=None, pad_id=0)

        def run(ids):
            engine.prefill(ids, torch.ones_like(ids), NEW)
            for t in range(NEW):
                engine.step(None, last=t == NEW - 1)
        run.engine = engine
        return run, policy_bytes
    kind, backend = row.split("-", 1) if "-" in row else ("fused", row)   # "reference": the fused reward
    backend = {"compiled": "static-compiled"}.get(backend, backend)
    reward = separate if kind == "unfused" else shared
    decoder = args_fast.ARGSDecoder(policy, reward, k=k, w=W, eos_token_id=[], pad_token_id=0, backend=backend)
    reads = policy_bytes + (weight_bytes(separate) if kind == "unfused" else 0)

    def run(ids):
        decoder.generate(ids, max_new_tokens=NEW if backend != "reference" else 8)
    run.engine = decoder.engine
    return run, reads


# ------------------------------------------------------------------------------------ the report
_report: dict = {"rows": []}


def write_report():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_cpu_step.json").write_text(json.dumps(_report, indent=2) + "\n")
    info, bw = _report["machine"], _report["read_bandwidth_gb_s"]
    lines = ["# One ARGS step on CPU: eager, static and compiled, against HF greedy generate", "",
             f"- command: `{_report['command']}`",
             f"- machine: {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads; native bf16: "
             f"{'yes' if info['native_bf16'] else 'no'} (flags: {', '.join(info['relevant_flags']) or 'none'}); "
             f"read bandwidth {bw:.1f} GB/s (sum of a 256 MB tensor)",
             f"- python {info['python']}, torch {info['torch']}, transformers {info['transformers']}",
             f"- models: SmolLM2-135M-Instruct + reward head (fused) or a separate 135M reward model (unfused); "
             f"{NEW} new tokens (reference: 8), w = {W}, no early stop, random prompt ids; median of {ROUNDS} rounds",
             "- ms/token = whole generate call / T (prefill included); x greedy = ms/token over hf-generate's in the "
             "same cell; floor = weight bytes read per token / read bandwidth; first call includes compiling", "",
             "| dtype | P | B | k | row | ms/token | x hf-generate | tokens/s | x floor | first call s | peak RSS MB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["dtype"], r["P"], r["B"], r["k"]): r["ms_per_token"] for r in _report["rows"]
            if r["row"] == "hf-generate" and r.get("ms_per_token")}
    for r in _report["rows"]:
        if r.get("ms_per_token") is None:
            lines.append(f"| {r['dtype']} | {r['P']} | {r['B']} | {r['k']} | {r['row']} | - | - | - | - | - | - | "
                         f"{r['note']} |")
            continue
        ref = base.get((r["dtype"], r["P"], r["B"], r["k"]))
        ratio = f"{r['ms_per_token'] / ref:.2f}" if ref else "-"
        lines.append(f"| {r['dtype']} | {r['P']} | {r['B']} | {r['k']} | {r['row']} | {r['ms_per_token']:.1f} | "
                     f"{ratio} | {r['tokens_per_s']:.1f} | {r['x_floor']:.1f} | {r['first_call_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['note']} |")
    (OUT / "bench_cpu_step.md").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module", autouse=True)
def machine():
    _report.update(command=f"ARGS_FAST_BENCH_GRID={GRID} .venv/bin/python -m pytest -q benchmarks/bench_cpu_step.py "
                           "--benchmark-only", machine=cpu_info(), grid=GRID, rounds=ROUNDS, new_tokens=NEW,
                   read_bandwidth_gb_s=read_bandwidth() / 1e9)
    yield
    write_report()
    print(f"\nwrote {OUT / 'bench_cpu_step.md'}", file=sys.stderr)


CASES = [(d, p, b, k, row) for d, p, b, k, rows in cells() for row in rows]


@pytest.mark.parametrize("dtype, P, B, k, row", CASES, ids=[f"{d}-P{p}-B{b}-k{k}-{r}" for d, p, b, k, r in CASES])
def test_step(benchmark, dtype, P, B, k, row):
    record = dict(dtype=dtype, P=P, B=B, k=k, row=row, ms_per_token=None, note="")
    _report["rows"].append(record)
    policy = models(dtype)[0]
    ids = prompt(B, P, policy.config.vocab_size)
    try:
        run, reads = make_run(row, dtype, k)
        start = time.perf_counter()
        with torch.no_grad():
            run(ids)
        first = time.perf_counter() - start
    except Exception as exc:   # a row that cannot run here says why; the others still run
        record["note"] = f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        write_report()
        pytest.skip(record["note"])
    new = 8 if row == "reference" else NEW
    with torch.no_grad():
        benchmark.pedantic(run, args=(ids,), rounds=ROUNDS, iterations=1)
    seconds = statistics.median(benchmark.stats.stats.data)
    engine = getattr(run, "engine", None)
    compiled = getattr(engine, "compile_seconds", {}) or {}
    record.update(ms_per_token=1000 * seconds / new, tokens_per_s=B * new / seconds, first_call_s=first,
                  x_floor=(seconds / new) / (reads / (_report["read_bandwidth_gb_s"] * 1e9)),
                  peak_rss_mb=peak_rss_mb(),
                  note="; ".join(f"compiled {k_[0]}x{k_[1]} {k_[2]} in {v:.1f} s" for k_, v in compiled.items()))
    benchmark.extra_info.update({k_: v for k_, v in record.items() if k_ != "note"})
    write_report()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "--benchmark-only"] + sys.argv[1:]))
