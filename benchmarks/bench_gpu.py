"""GPU benchmark of ARGS decoding backends, side by side in one run.

    python benchmarks/bench_gpu.py                      # full grid (long: restrict it, see --help)
    python benchmarks/bench_gpu.py --models smollm2-135m --batch 1,8 --prompt 128 --k 10
    python benchmarks/bench_gpu.py --dry-run-cpu        # tiny shapes on CPU: checks the script only

Random-init models of real shapes are built directly on the GPU (configs below, no downloads); the
policy and the reward model have the same shape (reward = *ForSequenceClassification, one label).
For every (model, batch B, prompt length P, k) it times, after one warm-up run:

* ARGS, greedy mode, w = 1, through each backend's engine: ``reference`` (slow oracle; only on the
  points of --reference-points, with --reference-tokens new tokens), ``hf`` (HF forwards + slot cache),
  ``static`` (static runners, torch ops, CUDA graph), ``static-triton`` and ``static-csrc`` (when they load);
* the fused ARGS step (``fused-<backend>``): the reward model's score row as a ``RewardHead`` on the
  policy's own backbone, so the policy scores its own k candidates: one model, one pass per token;
* ``implicit-<backend>``: ARGS with ``ImplicitReward(policy, reference)``, the policy being the tuned
  model and the reference a second random LM of its shape: one extra decode per token, no k-candidate
  pass (the static ones run eagerly, without a CUDA graph);
* the policy's plain greedy decode through the static engine with no reward model (``greedy``,
  once per (B, P), best ops available) and Hugging Face ``generate`` (``hf-generate``, greedy).

Reported per point: median ms per decode step (prefill excluded), generated tokens/s over the batch,
prefill ms, peak memory, and the ratio to a bandwidth floor: bytes one step must read (weights of both
models, minus embedding tables that are only gathered, plus the K/V each model attends over at the
mean decode length) divided by the device copy bandwidth measured in the same run. Results go to
benchmarks/results/bench_gpu[_<tag>].json and .md (rewritten after every point).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

if "--dry-run-cpu" in sys.argv[1:]:   # Triton's interpreter must be chosen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ARGS_BACKENDS = ("reference", "hf", "static", "static-triton", "static-csrc")
# the same backends with the reward as a head on the policy's own backbone (RewardHead): one pass per token
FUSED_BACKENDS = ("fused-hf", "fused-static", "fused-static-triton", "fused-static-csrc")
# vocabulary-level: ImplicitReward(policy, reference LM of the same shape), no candidate pass
IMPLICIT_BACKENDS = ("implicit-hf", "implicit-static", "implicit-static-csrc")
BASELINES = ("greedy", "hf-generate")


def model_configs(tiny: bool):
    """Real shapes (from the published configs), or scaled-down twins with the same structure."""
    from transformers import LlamaConfig, OPTConfig
    if tiny:
        return {
            "smollm2-135m": (LlamaConfig, dict(vocab_size=256, hidden_size=64, intermediate_size=96,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               max_position_embeddings=256, tie_word_embeddings=True)),
            "opt-1.3b": (OPTConfig, dict(vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64)),
            "llama-2-7b": (LlamaConfig, dict(vocab_size=256, hidden_size=64, intermediate_size=96,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                             max_position_embeddings=256)),
        }
    return {
        # HuggingFaceTB/SmolLM2-135M
        "smollm2-135m": (LlamaConfig, dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                           num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                           max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                           rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
        # facebook/opt-1.3b
        "opt-1.3b": (OPTConfig, dict(vocab_size=50272, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24,
                                     num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=2048,
                                     do_layer_norm_before=True, activation_function="relu")),
        # meta-llama/Llama-2-7b-hf
        "llama-2-7b": (LlamaConfig, dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                         max_position_embeddings=4096, rms_norm_eps=1e-5,
                                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    }


def parse_args(argv=None):
    ints = lambda s: [int(x) for x in s.split(",") if x]          # noqa: E731
    names = lambda s: [x for x in s.split(",") if x]              # noqa: E731
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=names, default=["smollm2-135m", "opt-1.3b", "llama-2-7b"])
    p.add_argument("--batch", type=ints, default=None, help="default 1,8,32 (dry run: 1,2)")
    p.add_argument("--prompt", type=ints, default=None, help="default 128,1024 (dry run: 8)")
    p.add_argument("--k", type=ints, default=None, help="default 4,10,40 (dry run: 2,3)")
    p.add_argument("--new-tokens", type=int, default=None, help="default 128 (dry run: 4)")
    p.add_argument("--backends", type=names, default=list(ARGS_BACKENDS + FUSED_BACKENDS + IMPLICIT_BACKENDS + BASELINES),
                   help=f"any of {ARGS_BACKENDS + FUSED_BACKENDS + IMPLICIT_BACKENDS + BASELINES}")
    p.add_argument("--reference-points", default=None,
                   help="B:P:k points (comma separated) where the slow reference backend runs, 'all' or 'none' "
                        "(default 1:128:4; dry run: 2:8:3)")
    p.add_argument("--reference-tokens", type=int, default=8, help="new tokens for the reference backend")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per point, median reported (default 3; dry run: 1)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument("--dry-run-cpu", action="store_true",
                   help="tiny models, float32, on CPU (Triton under its interpreter): checks the script, not speed")
    args = p.parse_args(argv)
    bad = [b for b in args.backends if b not in ARGS_BACKENDS + FUSED_BACKENDS + IMPLICIT_BACKENDS + BASELINES]
    if bad:
        p.error(f"unknown backends {bad}; choose from {ARGS_BACKENDS + FUSED_BACKENDS + IMPLICIT_BACKENDS + BASELINES}")
    defaults = (dict(batch=[2], prompt=[8], k=[3], new_tokens=3, reference_points="2:8:3", repeats=1) if args.dry_run_cpu
                else dict(batch=[1, 8, 32], prompt=[128, 1024], k=[4, 10, 40], new_tokens=128,
                          reference_points="1:128:4", repeats=3))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batch", "prompt", "k"):
        if not getattr(args, name) or min(getattr(args, name)) < 1:
            p.error(f"--{name} needs positive integers")
    if args.new_tokens < 1 or args.reference_tokens < 1 or args.repeats < 1:
        p.error("--new-tokens, --reference-tokens and --repeats must be >= 1")
    if args.dry_run_cpu:
        args.dtype = "float32"
        args.reference_tokens = min(args.reference_tokens, args.new_tokens)
        args.tag = args.tag or "dryrun_cpu"
    return args


# ------------------------------------------------------------------------------------------ helpers
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device, nbytes: int) -> float:
    """Device copy bandwidth in bytes/s: (read + write) bytes of a large copy, median of 10."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = []
    for i in range(12):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / statistics.median(times)


def streamed_weight_bytes(model) -> int:
    """Parameter bytes a decode step reads: all weights, except an input embedding table that is only
    gathered (it counts when it is also the output head, i.e. tied)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and head.weight is embed
    return total if tied else total - embed.numel() * embed.element_size()


def kv_bytes_per_slot(model, batch: int) -> int:
    c = model.config
    layers = c.num_hidden_layers
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * layers * batch * heads * head_dim * next(model.parameters()).element_size()


def build_models(name, tiny, dtype, device, vocab_reward_labels=1, seed=0, lm_only=False):
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification, OPTForCausalLM, OPTForSequenceClassification
    config_cls, kw = model_configs(tiny)[name]
    lm_cls, rm_cls = ((OPTForCausalLM, OPTForSequenceClassification) if config_cls.__name__ == "OPTConfig"
                      else (LlamaForCausalLM, LlamaForSequenceClassification))
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):   # initialise directly on the device, in the benchmark dtype
            torch.manual_seed(seed)
            policy = lm_cls(config_cls(pad_token_id=0, attn_implementation="sdpa", **kw)).eval()
            if lm_only:
                return policy, None
            torch.manual_seed(1)
            reward = rm_cls(config_cls(pad_token_id=0, num_labels=vocab_reward_labels, attn_implementation="sdpa",
                                       **kw)).eval()
    finally:
        torch.set_default_dtype(default)
    return policy, reward


def args_engine(backend, policy, reward, *, k, max_new_tokens, batch, prompt):
    """The engine the decoder builds for ``backend`` (greedy ARGS, w = 1, no EOS), caches sized up front."""
    engine = ARGSDecoder(policy, reward, k=k, w=1.0, mode="greedy", max_new_tokens=max_new_tokens,
                         eos_token_id=[], pad_token_id=0, backend=backend).engine
    if hasattr(engine, "allocate"):
        engine.allocate(batch, prompt + max_new_tokens)
    return engine


@torch.no_grad()
def time_engine(engine, ids, mask, steps, repeats, device):
    """Median (prefill s, decode s) of ``repeats`` runs after one warm-up run (graph capture, autotune)."""
    out = torch.empty(ids.shape[0], steps, dtype=torch.long, device=device)

    def run():
        sync(device)
        t0 = time.perf_counter()
        engine.prefill(ids, mask, steps)
        sync(device)
        t1 = time.perf_counter()
        for t in range(steps):
            token, _, _ = engine.step(None, last=t == steps - 1)
            out[:, t] = token
        sync(device)
        return t1 - t0, time.perf_counter() - t1

    run()
    runs = [run() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


@torch.no_grad()
def time_hf_generate(policy, ids, mask, steps, repeats, device):
    """Median (prefill s, decode s) of HF greedy ``generate``. generate(n) runs the prefill plus n - 1
    decode forwards, so ``steps`` decode forwards cost generate(steps + 1) - generate(1), each timed
    whole, interleaved. (Subtracting a separately timed bare forward under-counts generate's own
    prefill overhead and, on small models, went negative.)"""
    def run(new_tokens):
        sync(device)
        t0 = time.perf_counter()
        policy.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens, pad_token_id=0)
        sync(device)
        return time.perf_counter() - t0

    run(1), run(steps + 1)   # warm-up
    short, long = zip(*[(run(1), run(steps + 1)) for _ in range(repeats)])
    pre, total = statistics.median(short), statistics.median(long)
    return pre, total - pre


# ------------------------------------------------------------------------------------------ report
def markdown(meta, rows) -> str:
    lines = [f"# ARGS decoding benchmark ({meta['device']}, {meta['dtype']})", "",
             f"torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}, "
             f"triton {meta['versions']['triton']}, CUDA {meta['versions']['cuda']}, commit {meta['commit']}; "
             f"copy bandwidth {meta['copy_bandwidth_GBps']:.1f} GB/s (read+write, measured in this run); "
             f"median of {meta['repeats']} timed runs after one warm-up; greedy ARGS, w = 1, no EOS, random "
             f"full-length prompts; ms/step excludes prefill. {meta['note']}", "",
             "| model | backend | B | prompt | k | new tokens | ms/step | tokens/s | prefill ms | peak GiB | "
             "floor ms/step | x floor | speedup vs torch | x greedy | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "" if v is None else format(v, f)   # noqa: E731
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['prompt']} | {fmt(r['k'], 'd')} | "
                     f"{r['new_tokens']} | {fmt(r.get('ms_per_step'), '.2f')} | {fmt(r.get('tokens_per_s'), '.1f')} | "
                     f"{fmt(r.get('prefill_ms'), '.1f')} | {fmt(r.get('peak_GiB'), '.2f')} | "
                     f"{fmt(r.get('floor_ms_per_step'), '.3f')} | {fmt(r.get('x_floor'), '.2f')} | "
                     f"{fmt(r.get('speedup_vs_torch'), '.2f')} | {fmt(r.get('x_greedy'), '.2f')} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def write(meta, rows, stem):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(meta, rows))


def versions():
    import transformers
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "triton": triton_version, "cuda": torch.version.cuda}


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------------------------------ main
def main(argv=None):
    args = parse_args(argv)
    global ARGSDecoder, registry, build_static_engine
    if not args.dry_run_cpu and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device is visible (torch.cuda.is_available() is False); this benchmark "
                 "needs a GPU. Use --dry-run-cpu to check the script on tiny CPU shapes.")
    from args_fast.engine.backends import registry
    from args_fast.engine.backends.static_engine import build_static_engine
    from args_fast.decoding.decoder import ARGSDecoder
    from args_fast.rewards.head import RewardHead
    from args_fast.rewards.vocab import ImplicitReward

    device = torch.device("cpu" if args.dry_run_cpu else "cuda")
    dtype = getattr(torch, args.dtype)
    bandwidth = copy_bandwidth(device, (64 if args.dry_run_cpu else 1024) * 2 ** 20)
    ref_points = (None if args.reference_points == "all" else set() if args.reference_points == "none" else
                  {tuple(int(x) for x in p.split(":")) for p in args.reference_points.split(",") if p})
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
            "dtype": args.dtype, "versions": versions(), "commit": git_commit(), "repeats": args.repeats,
            "copy_bandwidth_GBps": bandwidth / 1e9, "command": " ".join([sys.executable] + sys.argv),
            "note": ("DRY RUN on CPU with tiny models: checks the script, the numbers say nothing about GPUs. "
                     if args.dry_run_cpu else "")
                    + f"reference runs only at B:P:k in {args.reference_points} with {args.reference_tokens} new tokens."}
    stem = "bench_gpu" + (f"_{args.tag}" if args.tag else "")
    rows = []
    print(f"device {meta['device']}, {args.dtype}, copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)

    for name in args.models:
        if name not in model_configs(args.dry_run_cpu):
            sys.exit(f"unknown model {name!r}; choose from {list(model_configs(args.dry_run_cpu))}")
        policy, reward = build_models(name, args.dry_run_cpu, dtype, device)
        head = RewardHead(policy, reward.score.weight.detach())
        reference_lm = []

        def implicit_reward():   # built on first use: at 7B it is another 13 GB
            if not reference_lm:
                reference_lm.append(build_models(name, args.dry_run_cpu, dtype, device, seed=2, lm_only=True)[0])
            reward_ = ImplicitReward(policy, reference_lm[0], 1.0)
            reward_.check(policy)
            return reward_
        w_policy, w_reward = streamed_weight_bytes(policy), streamed_weight_bytes(reward)
        for batch in args.batch:
            for prompt in args.prompt:
                g = torch.Generator(device="cpu").manual_seed(batch * 1000 + prompt)
                ids = torch.randint(3, policy.config.vocab_size, (batch, prompt), generator=g).to(device)
                mask = torch.ones_like(ids)
                jobs = [(b, k) for k in args.k for b in args.backends if b in ARGS_BACKENDS + FUSED_BACKENDS + IMPLICIT_BACKENDS]
                jobs += [(b, None) for b in args.backends if b in BASELINES]
                for backend, k in jobs:
                    steps = args.new_tokens
                    row = {"model": name, "backend": backend, "batch": batch, "prompt": prompt, "k": k,
                           "new_tokens": steps, "dtype": args.dtype, "device": meta["device"]}
                    if backend == "reference":
                        if ref_points is not None and (batch, prompt, k) not in ref_points:
                            continue
                        steps = row["new_tokens"] = args.reference_tokens
                    kv_slots = prompt + steps / 2          # mean attended length over the decode
                    floor_bytes = w_policy + kv_bytes_per_slot(policy, batch) * kv_slots
                    fused, implicit = backend in FUSED_BACKENDS, backend in IMPLICIT_BACKENDS
                    if fused:     # one model; its cache also holds the k candidate slots
                        floor_bytes += kv_bytes_per_slot(policy, batch) * k
                    elif implicit:   # the reference LM's weights and cache, read once per token
                        floor_bytes += w_policy + kv_bytes_per_slot(policy, batch) * kv_slots
                    elif k is not None:
                        floor_bytes += w_reward + kv_bytes_per_slot(reward, batch) * (kv_slots + k)
                    row["floor_ms_per_step"] = 1e3 * floor_bytes / bandwidth
                    engine = None
                    if device.type == "cuda":
                        gc.collect()   # the previous job's caches (tens of GB at 7B) must be gone first
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    try:
                        if backend == "hf-generate":
                            pre, dec = time_hf_generate(policy, ids, mask, steps, args.repeats, device)
                            row["note"] = "HF generate, DynamicCache; decode = generate(T + 1) - generate(1)"
                        else:
                            if backend == "greedy":
                                models = registry.Models(policy, reward, "cached")
                                options = registry.Options(k=1, w=0.0, temperature=1.0, eos_ids=None, pad_id=0)
                                best = next(b for b in ("static-csrc", "static-triton", "static")
                                            if registry.unavailable_reason(b, models, options) is None)
                                engine = build_static_engine(best, policy, None, **vars(options))
                                engine.allocate(batch, prompt + steps)
                                row["note"] = f"policy only, static engine with the {best} ops"
                            else:
                                name_, scorer, kind = ((backend[len("fused-"):], head, "head") if fused else
                                                       (backend[len("implicit-"):], implicit_reward(), "vocab")
                                                       if implicit else (backend, reward, "cached"))
                                if name_.startswith("static"):
                                    reason = registry.unavailable_reason(
                                        name_, registry.Models(policy, scorer, kind),
                                        registry.Options(k=k, w=1.0, temperature=1.0, eos_ids=None, pad_id=0))
                                    if reason is not None:
                                        row["note"] = f"skipped: {reason}"
                                        rows.append(row)
                                        print(f"{name} {backend} B={batch} P={prompt} k={k}: skipped ({reason})",
                                              flush=True)
                                        continue
                                engine = args_engine(name_, policy, scorer, k=k, max_new_tokens=steps,
                                                     batch=batch, prompt=prompt)
                                if getattr(engine, "use_graph", False):
                                    row["note"] = "one CUDA graph per step"
                            pre, dec = time_engine(engine, ids, mask, steps, args.repeats, device)
                            del engine
                    except torch.OutOfMemoryError as exc:
                        message = str(exc).splitlines()[0][:120]
                        engine = exc = None   # a live engine (or the traceback's frames) would keep its caches
                        gc.collect()
                        torch.cuda.empty_cache()
                        row["note"] = f"out of memory: {message}"
                        rows.append(row)
                        print(f"{name} {backend} B={batch} P={prompt} k={k}: OOM", flush=True)
                        write(meta, rows, stem)
                        continue
                    if dec <= 0:   # a difference of two timings below the clock's resolution: no number
                        row["note"] = row.get("note", "") + f"; decode time not resolved ({dec:.2e} s), no figure"
                        rows.append(row)
                        print(f"{name} {backend} B={batch} P={prompt} k={k}: decode time not resolved", flush=True)
                        write(meta, rows, stem)
                        continue
                    ms = 1e3 * dec / steps
                    row.update(ms_per_step=ms, tokens_per_s=batch * steps / dec,
                               prefill_ms=1e3 * pre, x_floor=ms / row["floor_ms_per_step"])
                    if device.type == "cuda":
                        row["peak_GiB"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                    rows.append(row)
                    print(f"{name} {backend} B={batch} P={prompt} k={k}: {ms:.2f} ms/step, "
                          f"{row['tokens_per_s']:.1f} tok/s, {row['x_floor']:.2f}x floor", flush=True)
                    write(meta, rows, stem)
                # side-by-side ratios within this (model, B, P)
                for r in rows:
                    if r["model"] == name and r["batch"] == batch and r["prompt"] == prompt and r.get("ms_per_step"):
                        base = next((t for t in rows if t["model"] == name and t["batch"] == batch
                                     and t["prompt"] == prompt and t["k"] == r["k"] and t["backend"] == "hf"
                                     and t.get("ms_per_step")), None)
                        if base is not None and r["k"] is not None:
                            r["speedup_vs_torch"] = base["ms_per_step"] / r["ms_per_step"]
                        greedy = next((t for t in rows if t["model"] == name and t["batch"] == batch
                                       and t["prompt"] == prompt and t["backend"] == "greedy"
                                       and t.get("ms_per_step")), None)
                        if greedy is not None and r["k"] is not None:   # ARGS cost over the same engine's greedy
                            r["x_greedy"] = r["ms_per_step"] / greedy["ms_per_step"]
                write(meta, rows, stem)
        del policy, reward, head, reference_lm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write(meta, rows, stem)
    print(f"wrote {RESULTS / stem}.json and .md")


if __name__ == "__main__":
    main()
