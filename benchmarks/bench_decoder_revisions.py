"""Before/after a change: the decoder benchmark's ARGS path timed for two revisions side by side.

    .venv/bin/python benchmarks/bench_decoder_revisions.py --before <rev> [--after WORKTREE] [--pairs 3]

The bench_decoder setting (random-init Llama 26.1M as policy and reward model, float32, prompt 256,
16 new tokens, k = 10, w = 1, B = 1 and 4) runs through ``args_fast.generate`` on the prefix-cached
backend of each revision (``--backend-before``/``--backend-after``: the name changed from ``torch``
to ``hf``). ``<rev>`` is exported with ``git archive`` into a temporary directory; each measurement
is a fresh subprocess that imports args_fast from its tree, warms up once and times ``--rounds``
calls. The two revisions alternate ``--pairs`` times (before, after, after, before, ...) so a drift
of the machine hits both; medians over all timed calls. Run it on a quiet machine. Writes
benchmarks/results/bench_decoder_revisions.{md,json}.
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROMPT, NEW, K, W = 256, 16, 10, 1.0


def child(tree: str, backend: str, batch: int, rounds: int) -> None:
    sys.path.insert(0, tree)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    import args_fast
    if not Path(args_fast.__file__).resolve().is_relative_to(Path(tree).resolve()):
        raise SystemExit(f"imported args_fast from {args_fast.__file__}, not from {tree}")

    def config(**extra):
        return LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                           num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                           pad_token_id=0, eos_token_id=1, **extra)

    torch.manual_seed(0)
    policy = LlamaForCausalLM(config()).eval()
    reward = LlamaForSequenceClassification(config(num_labels=1)).eval()
    ids = torch.randint(2, 8192, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))
    times, tokens = [], None
    for r in range(rounds + 1):   # the first call warms up
        start = time.perf_counter()
        out = args_fast.generate(policy, reward, ids, k=K, w=W, max_new_tokens=NEW, eos_token_id=[], backend=backend)
        if r:
            times.append(time.perf_counter() - start)
        tokens = out.sequences[:, PROMPT:].tolist()
    print(json.dumps({"seconds": times, "tokens": tokens}))


def measure(tree: Path, backend: str, batch: int, rounds: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, __file__, "--child", str(tree), "--backend", backend, "--batch", str(batch),
                          "--rounds", str(rounds)], capture_output=True, text=True, env=env, cwd=tree, check=False)
    if out.returncode:
        raise SystemExit(f"measurement in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", help="git revision of the 'before' tree (exported with git archive)")
    p.add_argument("--after", default=str(ROOT), help="the 'after' tree (default: this working tree)")
    p.add_argument("--backend-before", default="torch", help="backend name in the before tree (default torch)")
    p.add_argument("--backend-after", default="hf", help="backend name in the after tree (default hf)")
    p.add_argument("--pairs", type=int, default=3, help="alternations of before/after per batch size (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="timed calls per measurement after one warm-up (default 3)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.backend, args.batch, args.rounds)
        return 0
    if not args.before:
        p.error("--before REV is required")
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix=f"args_fast_{rev}_"))
    try:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        trees = {"before": (tmp, args.backend_before), "after": (Path(args.after), args.backend_after)}
        rows = {}
        for batch in (1, 4):
            samples = {"before": [], "after": []}
            tokens = {}
            for pair in range(args.pairs):
                order = ("before", "after") if pair % 2 == 0 else ("after", "before")
                for name in order:
                    tree, backend = trees[name]
                    result = measure(tree, backend, batch, args.rounds)
                    samples[name] += result["seconds"]
                    tokens[name] = result["tokens"]
                    print(f"B={batch} {name}: {[round(s / NEW * 1e3, 1) for s in result['seconds']]} ms/tok", flush=True)
            med = {n: statistics.median(v) / NEW * 1e3 for n, v in samples.items()}
            rows[batch] = {"before_ms_per_token": med["before"], "after_ms_per_token": med["after"],
                           "after_over_before": med["after"] / med["before"], "same_tokens": tokens["before"] == tokens["after"],
                           "samples_before_s": samples["before"], "samples_after_s": samples["after"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import torch
    import transformers
    command = f".venv/bin/python benchmarks/bench_decoder_revisions.py --before {args.before} --pairs {args.pairs} --rounds {args.rounds}"
    meta = {"before": rev, "after": args.after if args.after != str(ROOT) else "working tree", "command": command,
            "backends": {"before": args.backend_before, "after": args.backend_after}, "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "setting": f"random-init Llama 26.1M policy + reward model, float32, prompt {PROMPT}, {NEW} new tokens, k={K}, w={W}",
            "unit": "ms per generated token (whole generate call / new tokens), median over all timed calls"}
    lines = [f"# Decoder before/after ({rev} vs {meta['after']})", "",
             f"- {meta['setting']}; {args.pairs} alternations x {args.rounds} timed calls per revision and batch",
             f"- {meta['machine']}, {meta['cores']} cores, {meta['torch_threads']} torch threads; torch {torch.__version__}, "
             f"transformers {transformers.__version__}, python {platform.python_version()}",
             f"- command: `{command}`", "",
             f"| B | before ({args.backend_before}) ms/tok | after ({args.backend_after}) ms/tok | after / before | same tokens |",
             "|---|---|---|---|---|"]
    for batch, r in rows.items():
        lines.append(f"| {batch} | {r['before_ms_per_token']:.1f} | {r['after_ms_per_token']:.1f} | "
                     f"{r['after_over_before']:.3f} | {r['same_tokens']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_decoder_revisions.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "bench_decoder_revisions.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
