"""First-call seconds of the compiled step in a fresh process, with a cold and then a warm compile cache.

    .venv/bin/python benchmarks/bench_compile_cache.py [--dtype float32] [--new-tokens 16]

Runs the same child process twice with one new, empty ``TORCHINDUCTOR_CACHE_DIR``: the first child
compiles from nothing, the second finds Inductor's compiled code on disk (Dynamo still traces). Each
child loads the embedded default models, builds ``backend="static-compiled"`` with the reward head
(the fused step), and times its first ``generate`` (compile included) and a second one. Prints one
JSON line per child and writes them to ``$ARGS_FAST_BENCH_OUT/bench_compile_cache.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, torch, args_fast
from args_fast import default_models
dtype = getattr(torch, sys.argv[1]); new = int(sys.argv[2])
policy, tok = default_models.load_default_policy(dtype=dtype)
reward = default_models.load_default_reward(dtype=dtype, policy=policy)
ids = torch.randint(3, policy.config.vocab_size, (1, 256), generator=torch.Generator().manual_seed(0))
d = args_fast.ARGSDecoder(policy, reward, k=10, w=1.0, eos_token_id=[], backend="static-compiled")
t = time.perf_counter(); d.generate(ids, max_new_tokens=new); first = time.perf_counter() - t
t = time.perf_counter(); d.generate(ids, max_new_tokens=new); second = time.perf_counter() - t
print(json.dumps({"first_call_s": first, "second_call_s": second, "compile_seconds": list(d.compile_seconds.values())}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for label in ("cold cache", "warm cache"):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, args.dtype, str(args.new_tokens)], env=env,
                                 capture_output=True, text=True, check=True)
            row = {"process": label, "dtype": args.dtype, "new_tokens": args.new_tokens,
                   "process_seconds": time.perf_counter() - start, **json.loads(out.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    out_dir = Path(os.environ.get("ARGS_FAST_BENCH_OUT", "/tmp/args_fast_bench"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_compile_cache.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
