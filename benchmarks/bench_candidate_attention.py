"""Benchmark: Triton candidate attention vs the torch reference vs SDPA with an explicit mask.

    python benchmarks/bench_candidate_attention.py                   # Llama-7B-like grid, bf16, on CUDA
    python benchmarks/bench_candidate_attention.py --json benchmarks/results/candidate_attention.json

Shapes: Hq=32, Hkv in {32, 8}, D=128, prefix in {128, 1024, 4096}, k in {4, 10, 40}. Every row of the
batch has the full prefix; the cache is one layer (a view) of a (2, B, Hkv, S, D) tensor. Timings are
medians from ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls), all three methods
measured side by side in the same run; each line also gives the max |error| against the fp32
reference and the kernel's effective K/V read bandwidth. Before timing, the kernel is captured in a
CUDA graph and replayed, and the replay must equal the eager output.

Without CUDA it says so and, instead of timing, runs a tiny shape through the Triton interpreter as a
smoke check (wall times printed there are interpreter times, not performance numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--prefix", type=int, nargs="+", default=[128, 1024, 4096])
    p.add_argument("--k", type=int, nargs="+", default=[4, 10, 40])
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args()


def sdpa(q, k_cache, v_cache, mask, group):
    import torch.nn.functional as F
    try:
        return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=group > 1)
    except TypeError:   # torch without enable_gqa
        return F.scaled_dot_product_attention(q, k_cache.repeat_interleave(group, 1),
                                              v_cache.repeat_interleave(group, 1), attn_mask=mask)


def make(batch, hq, hkv, dim, prefix, k, dtype, device):
    slots = prefix + k
    q = torch.randn(batch, k, hq, dim, device=device, dtype=dtype).transpose(1, 2)
    kc = torch.randn(2, batch, hkv, slots, dim, device=device, dtype=dtype)[1]
    vc = torch.randn(2, batch, hkv, slots, dim, device=device, dtype=dtype)[1]
    start = torch.zeros(batch, dtype=torch.int32, device=device)
    end = torch.full((batch,), prefix, dtype=torch.int32, device=device)
    pos = torch.arange(slots, device=device)
    visible = (pos < prefix) | (pos == prefix + torch.arange(k, device=device)[:, None])   # (k, S)
    mask = visible.expand(batch, 1, k, slots)
    return q, kc, vc, start, end, mask


def environment(device):
    import triton
    env = dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version())
    env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def gpu(args):
    import triton
    from args_fast.engine.kernels import candidate_attention
    from args_fast.engine.ops import candidate_attention as candidate_attention_reference

    device, dtype = torch.device("cuda"), DTYPES[args.dtype]
    env = environment(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()), f"dtype={args.dtype}")
    header = (f"{'B':>3} {'Hq':>3} {'Hkv':>3} {'D':>4} {'prefix':>6} {'k':>3} | {'kernel us':>9} {'torch ref us':>12} "
              f"{'sdpa us':>8} | {'ref/kern':>8} {'sdpa/kern':>9} | {'kern GB/s':>9} | {'err kern':>8} {'err sdpa':>8}")
    print(header)
    rows = []
    for batch in args.batch:
        for hkv in args.kv_heads:
            for prefix in args.prefix:
                for k in args.k:
                    torch.manual_seed(0)
                    q, kc, vc, start, end, mask = make(batch, args.q_heads, hkv, args.dim, prefix, k, dtype, device)
                    group = args.q_heads // hkv
                    kernel = lambda: candidate_attention(q, kc, vc, start, end)
                    ref = candidate_attention_reference(q, kc, vc, start, end).float()
                    eager = kernel()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        captured = kernel()
                    graph.replay()
                    torch.cuda.synchronize()
                    assert torch.equal(captured, eager), "CUDA-graph replay differs from the eager kernel"
                    t_kernel = triton.testing.do_bench(kernel, return_mode="median") * 1e3
                    t_ref = triton.testing.do_bench(lambda: candidate_attention_reference(q, kc, vc, start, end),
                                                    return_mode="median") * 1e3
                    t_sdpa = triton.testing.do_bench(lambda: sdpa(q, kc, vc, mask, group), return_mode="median") * 1e3
                    err_kernel = (eager.float() - ref).abs().max().item()
                    err_sdpa = (sdpa(q, kc, vc, mask, group).float() - ref).abs().max().item()
                    kv_bytes = 2 * batch * hkv * (prefix + k) * args.dim * kc.element_size()
                    row = dict(batch=batch, q_heads=args.q_heads, kv_heads=hkv, dim=args.dim, prefix=prefix, k=k,
                               kernel_us=t_kernel, torch_ref_us=t_ref, sdpa_us=t_sdpa,
                               ref_over_kernel=t_ref / t_kernel, sdpa_over_kernel=t_sdpa / t_kernel,
                               kernel_kv_gbps=kv_bytes / t_kernel / 1e3, max_err_kernel=err_kernel,
                               max_err_sdpa=err_sdpa)
                    rows.append(row)
                    print(f"{batch:>3} {args.q_heads:>3} {hkv:>3} {args.dim:>4} {prefix:>6} {k:>3} | {t_kernel:>9.1f} "
                          f"{t_ref:>12.1f} {t_sdpa:>8.1f} | {row['ref_over_kernel']:>8.2f} "
                          f"{row['sdpa_over_kernel']:>9.2f} | {row['kernel_kv_gbps']:>9.0f} | "
                          f"{err_kernel:>8.1e} {err_sdpa:>8.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=env, dtype=args.dtype, timing="triton.testing.do_bench median",
                           results=rows), f, indent=1)
        print(f"wrote {args.json}")


def interpreter_smoke():
    from args_fast.engine.kernels import candidate_attention
    from args_fast.engine.ops import candidate_attention as candidate_attention_reference

    print("no CUDA device: skipping the GPU benchmark; running a tiny interpreter smoke check instead "
          "(times below are Triton-interpreter times, NOT performance numbers)")
    print(" ".join(f"{k}={v}" for k, v in environment(torch.device("cpu")).items()), "dtype=fp32")
    torch.manual_seed(0)
    q, kc, vc, start, end, _ = make(2, 4, 2, 64, 200, 4, torch.float32, torch.device("cpu"))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        out = candidate_attention(q, kc, vc, start, end)
        times.append(time.perf_counter() - t)
    err = (out - candidate_attention_reference(q, kc, vc, start, end)).abs().max().item()
    print(f"B=2 Hq=4 Hkv=2 D=64 prefix=200 k=4: max |kernel - reference| = {err:.1e}, "
          f"interpreter median {statistics.median(times) * 1e3:.0f} ms")
    if err > 1e-5:
        raise SystemExit("smoke check FAILED")


if __name__ == "__main__":
    args = parse()
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        gpu(args)
    else:
        os.environ["TRITON_INTERPRET"] = "1"   # before args_fast.kernels defines its @triton.jit functions
        interpreter_smoke()
