"""torch.topk vs args_fast's compiled topk_logits (csrc/), side by side in one run.

    python benchmarks/bench_topk.py [--device cpu|cuda] [--iters 50] [--dtypes float32,bfloat16]

Prints median time per call of each, their ratio, and the environment, for decode-shaped logits
(B, V) with vocabularies of common models. Each case first checks that both agree (tie-free input).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from args_fast import compiled


def median_ms(fn, iters: int, device: str) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--vocabs", default="32000,151936")
    parser.add_argument("--ks", default="10,64")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (CPU); 0 = leave as is")
    args = parser.parse_args()
    if not compiled.available():
        sys.exit(f"args_fast._C unavailable: {compiled.unavailable_reason()}")
    if args.device == "cuda" and not compiled.cuda_available():
        sys.exit("args_fast._C was built without CUDA")

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    print(f"device: {args.device} ({name}), torch {torch.__version__}, cuda {torch.version.cuda}, "
          f"python {platform.python_version()}, torch threads {torch.get_num_threads()}, iters {args.iters} "
          f"(median ms per call; ours = torch.ops.args_fast.topk_logits incl. custom-op dispatch)")
    print(f"{'dtype':>9} {'B':>4} {'V':>7} {'k':>3} | {'torch.topk':>10} {'ours':>9} | {'torch/ours':>10}")
    gen = torch.Generator().manual_seed(0)
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        for B in map(int, args.batches.split(",")):
            for V in map(int, args.vocabs.split(",")):
                if dtype == torch.float32:  # a permutation: no ties, so the indices must agree too
                    x = (torch.rand(B, V, generator=gen).argsort(dim=-1).float() / 64).to(dev)
                else:  # low precision has ties, whose order torch.topk leaves open: compare values only
                    x = (torch.randn(B, V, generator=gen) * 4).to(dev, dtype)
                for k in map(int, args.ks.split(",")):
                    ref = torch.topk(x, k)
                    ours = compiled.topk_logits(x, k)
                    assert torch.equal(ours[0], ref.values.float()), "values disagree"
                    assert dtype != torch.float32 or torch.equal(ours[1], ref.indices), "indices disagree"
                    t_torch = median_ms(lambda: torch.topk(x, k), args.iters, args.device)
                    t_ours = median_ms(lambda: compiled.topk_logits(x, k), args.iters, args.device)
                    print(f"{str(dtype)[6:]:>9} {B:>4} {V:>7} {k:>3} | {t_torch:10.4f} {t_ours:9.4f} | "
                          f"{t_torch / t_ours:10.2f}")


if __name__ == "__main__":
    main()
