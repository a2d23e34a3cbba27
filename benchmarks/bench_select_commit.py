"""Benchmark: fused Triton select + commit vs the torch reference composition (select_candidates +
commit_slots_ + prefix_end += 1).

    python benchmarks/bench_select_commit.py          # Llama-7B-like caches (32 layers, D=128), bf16, on CUDA
    python benchmarks/bench_select_commit.py --json benchmarks/results/select_commit.json

Both run from identical state and must produce identical outputs, caches, flags and prefix_end
(checked before timing), and one kernel call is captured in a CUDA graph and replayed against eager.
Every timed call first resets prefix_end with one tiny copy (both methods pay it), because each call
advances it. Medians from ``triton.testing.do_bench``, side by side in one run.

Without CUDA it says so and runs a tiny interpreter smoke check instead (no performance numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--k", type=int, nargs="+", default=[10, 40])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--slots", type=int, default=1024)
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args()


def make(batch, k, layers, heads, dim, slots, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(batch, k, device=device, generator=g).sort(-1, descending=True).values
    return dict(top_logits=logits, top_ids=torch.randint(0, 32000, (batch, k), device=device, generator=g),
                rewards=torch.randn(batch, k, device=device, generator=g),
                uniforms=torch.rand(batch, k, device=device, generator=g),
                finished=torch.zeros(batch, dtype=torch.bool, device=device),
                eos_ids=torch.tensor([2], device=device),
                k_cache=torch.randn(layers, batch, heads, slots, dim, device=device, generator=g).to(dtype),
                v_cache=torch.randn(layers, batch, heads, slots, dim, device=device, generator=g).to(dtype),
                prefix_end=torch.full((batch,), slots // 2, dtype=torch.long, device=device))


def clone(state):
    return {n: (t.clone() if isinstance(t, torch.Tensor) else t) for n, t in state.items()}


def same(a, b, out, ref):
    outs = all(torch.equal(x.nan_to_num(-1.0) if x.is_floating_point() else x,
                           y.nan_to_num(-1.0) if y.is_floating_point() else y) for x, y in zip(out, ref))
    return outs and all(torch.equal(a[n], b[n]) for n in ("finished", "prefix_end", "k_cache", "v_cache"))


def environment(device):
    import triton
    env = dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version())
    env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return env


def gpu(args):
    import triton
    from args_fast.engine.kernels import select_commit
    from args_fast.engine.ops import select_commit as select_commit_reference

    device, dtype = torch.device("cuda"), DTYPES[args.dtype]
    env = environment(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()), f"cache dtype={args.dtype}")
    print(f"{'mode':>10} {'B':>3} {'k':>3} {'L':>3} {'Hkv':>3} {'D':>4} | {'kernel us':>9} {'torch ref us':>12} | "
          f"{'ref/kern':>8}")
    rows = []
    opts = dict(w=1.5, temperature=0.7, pad_id=0)
    for mode in ("greedy", "stochastic"):
        for batch in args.batch:
            for heads in args.kv_heads:
                for k in args.k:
                    state = make(batch, k, args.layers, heads, args.dim, args.slots, dtype, device)
                    if mode == "greedy":
                        state["uniforms"] = None
                    a, b = clone(state), clone(state)
                    assert same(a, b, select_commit(**a, **opts), select_commit_reference(**b, **opts)), \
                        "kernel and reference disagree"
                    end0 = state["prefix_end"].clone()
                    g_state = clone(state)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        g_out = select_commit(**g_state, **opts)
                    e_state = clone(state)   # capture records without running: g_state is still fresh
                    graph.replay()
                    e_out = select_commit(**e_state, **opts)
                    torch.cuda.synchronize()
                    assert same(g_state, e_state, g_out, e_out), "CUDA-graph replay differs from eager"

                    def timed(fn, s):
                        def call():
                            s["prefix_end"].copy_(end0)
                            fn(**s, **opts)
                        return triton.testing.do_bench(call, return_mode="median") * 1e3
                    t_kernel, t_ref = timed(select_commit, a), timed(select_commit_reference, b)
                    row = dict(mode=mode, batch=batch, k=k, layers=args.layers, kv_heads=heads, dim=args.dim,
                               slots=args.slots, kernel_us=t_kernel, torch_ref_us=t_ref, ref_over_kernel=t_ref / t_kernel)
                    rows.append(row)
                    print(f"{mode:>10} {batch:>3} {k:>3} {args.layers:>3} {heads:>3} {args.dim:>4} | {t_kernel:>9.1f} "
                          f"{t_ref:>12.1f} | {row['ref_over_kernel']:>8.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=env, dtype=args.dtype, timing="triton.testing.do_bench median, "
                           "each call includes one prefix_end reset copy", results=rows), f, indent=1)
        print(f"wrote {args.json}")


def interpreter_smoke():
    from args_fast.engine.kernels import select_commit
    from args_fast.engine.ops import select_commit as select_commit_reference

    print("no CUDA device: skipping the GPU benchmark; running a tiny interpreter smoke check instead "
          "(no performance numbers)")
    print(" ".join(f"{k}={v}" for k, v in environment(torch.device("cpu")).items()), "cache dtype=fp32")
    state = make(4, 10, 2, 2, 64, 64, torch.float32, torch.device("cpu"))
    opts = dict(w=1.5, temperature=0.7, pad_id=0)
    a, b = clone(state), clone(state)
    ok = same(a, b, select_commit(**a, **opts), select_commit_reference(**b, **opts))
    print(f"B=4 k=10 L=2 Hkv=2 D=64 stochastic: kernel {'matches' if ok else 'DIFFERS FROM'} the reference")
    if not ok:
        raise SystemExit("smoke check FAILED")


if __name__ == "__main__":
    args = parse()
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        gpu(args)
    else:
        os.environ["TRITON_INTERPRET"] = "1"   # before args_fast.kernels defines its @triton.jit functions
        interpreter_smoke()
