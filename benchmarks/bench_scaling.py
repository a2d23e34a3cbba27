"""Data-parallel `args-fast eval` on this machine: 1 process vs 2 torchrun processes, prompts per second.

    .venv/bin/python benchmarks/bench_scaling.py [--rounds 2] [--num-prompts 16] [--max-new-tokens 32]

Each configuration runs the whole command as a user would (a fresh process: model loading, the
MiniLM judges and the writing of the files included) on the embedded default models, methods
``greedy,args-greedy`` (k = 10, w = 1), ``--batch-size 4``, float32, CPU:

* ``1 process x 2 threads``: plain ``python -m args_fast eval --threads 2``;
* ``1 process x 1 thread``: the same with ``--threads 1`` (the per-rank work of the next row);
* ``2 processes x 1 thread``: ``torchrun --standalone --nproc-per-node 2 -m args_fast eval --threads 1``.

Rows are run one after another in one invocation, the order rotated each round; medians of the wall
time over rounds. Prompts per second counts every prompt of every method (2 x --num-prompts). The
2-process run's result files are compared with the 1-process run's (all fields but the times): they
must be equal. Run it on a quiet machine; writes benchmarks/results/bench_scaling_cpu.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ROWS = {"1 process x 2 threads": (1, 2), "1 process x 1 thread": (1, 1), "2 processes x 1 thread": (2, 1)}


def command(nproc: int, threads: int, out: Path, args) -> list[str]:
    eval_argv = ["eval", "--methods", "greedy,args-greedy", "--num-prompts", str(args.num_prompts),
                 "--max-new-tokens", str(args.max_new_tokens), "--batch-size", "4", "--threads", str(threads),
                 "--out-dir", str(out)]
    if nproc == 1:
        return [sys.executable, "-m", "args_fast", *eval_argv]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "args_fast", *eval_argv]


def records(out: Path) -> dict:
    drop = {"elapsed"}
    return {p.name: [{k: v for k, v in json.loads(line).items() if k not in drop}
                     for line in p.read_text().splitlines()] for p in sorted(out.glob("*.jsonl"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(command(1, 2, tmp / "warm", argparse.Namespace(num_prompts=1, max_new_tokens=2)), env=env,
                   check=True, capture_output=True)   # the defaults' one-time dequantization, file caches
    times = {name: [] for name in ROWS}
    outputs = {}
    names = list(ROWS)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            nproc, threads = ROWS[name]
            out = tmp / f"{nproc}x{threads}-{r}"
            start = time.perf_counter()
            done = subprocess.run(command(nproc, threads, out, args), env=env, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            times[name].append(elapsed)
            outputs[name] = records(out)
            print(f"round {r} {name}: {elapsed:.1f} s", file=sys.stderr)
    same = outputs["2 processes x 1 thread"] == outputs["1 process x 1 thread"]
    prompts = 2 * args.num_prompts
    rows = {name: {"wall_s_median": statistics.median(ts), "wall_s": ts,
                   "prompts_per_s": prompts / statistics.median(ts)} for name, ts in times.items()}
    base = rows["1 process x 2 threads"]["prompts_per_s"]
    for row in rows.values():
        row["vs_1x2"] = row["prompts_per_s"] / base
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    meta = {"command": "python benchmarks/bench_scaling.py " + " ".join(sys.argv[1:]), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "num_prompts": args.num_prompts, "methods": "greedy,args-greedy",
            "max_new_tokens": args.max_new_tokens, "batch_size": 4, "rounds": args.rounds,
            "two_process_files_equal_one_process": same}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_scaling_cpu.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Data-parallel eval on this machine (CPU)", "",
             f"- command: `{meta['command']}`",
             f"- machine: {cpu}, {os.cpu_count()} CPUs; python {meta['python']}, torch {meta['torch']}, "
             f"transformers {meta['transformers']}",
             f"- `args-fast eval` on the embedded default models (float32), methods greedy + args-greedy (k 10, w 1), "
             f"{args.num_prompts} prompts, {args.max_new_tokens} new tokens, batch size 4; wall time of the whole "
             f"command (loading included), median of {args.rounds} rounds, rows rotated",
             f"- 2-process result files equal the 1-process files (all fields but the times): **{same}**", "",
             "| Configuration | Wall s (median) | Prompts/s | vs 1 process x 2 threads |", "|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['wall_s_median']:.1f} | {row['prompts_per_s']:.3f} | {row['vs_1x2']:.2f}x |")
    (RESULTS / "bench_scaling_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
