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

* ``official-style``: ARGS as the official ARGS code runs it: the policy on Hugging Face's own cache, the
  reward model with k full caches per row (each candidate's forward reads its own full-length copy of the
  sequence's K/V, nothing shared), and after each choice the winner's cache copied into all k
  (``reorder_cache``, an index_select of every layer), the reward model's prompt pass run on k copies;
* ``compiled``: every registry backend whose name contains "compiled" (and its fused twin); a row saying
  so when the registry has none.

Reported per point: median ms per decode step (= ms per generated token of a row; prefill excluded),
generated tokens/s over the batch, prefill ms, peak memory, and the ratio to a bandwidth floor: bytes one
step must read (weights of both models, minus embedding tables that are only gathered, plus the K/V each
model attends over at the mean decode length) divided by the device copy bandwidth measured in the same
run. Results go to benchmarks/results/bench_gpu[_<tag>].json and .md, or into --out DIR, rewritten
(atomically) after every row, so a run that is cut short still leaves valid files.

``--plan session`` runs the fixed, ordered grid of the GPU session (benchmarks/gpu_session.sh): a smoke
pass on the 135M shape, the Llama-2-7B headline (B 1, P 1024, k 10, 128 new tokens), then B 8, B 32,
k 40 and the OPT-1.3B shape. ``--time-budget-s`` stops launching points when too little time is left
(each such point gets a "not run" row) and ``--point-timeout-s`` bounds each point; timed runs are cut
short (fewer repeats, at least one) when they would overrun the point's limit. ``--self-check`` runs the
backend registry's self-check of each fast backend instead of the grid.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
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
# the official ARGS code's loop (k full reward caches); "compiled": the registry's compiled-step backends, if any
OFFICIAL = "official-style"
COMPILED = "compiled"
EXTRA = (OFFICIAL, COMPILED, "fused-" + COMPILED)
ALL_BACKENDS = ARGS_BACKENDS + FUSED_BACKENDS + IMPLICIT_BACKENDS + BASELINES + EXTRA
# the order rows are measured in at each point (the session's side-by-side order)
ORDER = ("hf-generate", "greedy", "reference", OFFICIAL, "hf", "static", "static-triton", "static-csrc", COMPILED,
         "fused-hf", "fused-static", "fused-static-triton", "fused-static-csrc", "fused-" + COMPILED,
         "implicit-hf", "implicit-static", "implicit-static-csrc")


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
    p.add_argument("--backends", type=names, default=list(ORDER), help=f"any of {ORDER}")
    p.add_argument("--reference-points", default=None,
                   help="B:P:k points (comma separated) where the slow reference backend runs, 'all' or 'none' "
                        "(default 1:128:4; dry run: 2:8:3)")
    p.add_argument("--reference-tokens", type=int, default=8, help="new tokens for the reference backend")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per point, median reported (default 3; dry run: 1)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the result files (default benchmarks/results); written after every row")
    p.add_argument("--plan", choices=["grid", "session"], default="grid",
                   help="grid: every --models x --batch x --prompt x --k; session: the GPU session's fixed, "
                        "ordered sections (smoke 135M, 7B headline, B 8, B 32, k 40, 1.3B); --models, --batch, "
                        "--prompt, --k, --new-tokens and --reference-points are then ignored")
    p.add_argument("--sections", type=names, default=None,
                   help="with --plan session: run only these sections (names as in the plan)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="stop launching points when less than --min-point-s of this budget is left (from the start)")
    p.add_argument("--point-timeout-s", type=float, default=None,
                   help="wall-clock limit of one point (warm-up + timed runs); default 150 (dry run: 60)")
    p.add_argument("--point-target-s", type=float, default=None,
                   help="no further timed run starts once a point has run this long (at least one timed run "
                        "after the warm-up); default none (the session script sets it)")
    p.add_argument("--min-point-s", type=float, default=None,
                   help="a point is launched only with at least this much budget left; default 8 (dry run: 0.5)")
    p.add_argument("--self-check", action="store_true",
                   help="run the registry's self-check of each fast backend (in --dtype on GPU) and exit")
    p.add_argument("--dry-run-cpu", action="store_true",
                   help="tiny models, float32, on CPU (Triton under its interpreter): checks the script, not speed")
    args = p.parse_args(argv)
    bad = [b for b in args.backends if b not in ALL_BACKENDS]
    if bad:
        p.error(f"unknown backends {bad}; choose from {ALL_BACKENDS}")
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
    if args.point_timeout_s is None:
        args.point_timeout_s = 60.0 if args.dry_run_cpu else 150.0
    if args.min_point_s is None:
        args.min_point_s = 0.5 if args.dry_run_cpu else 8.0
    if args.dry_run_cpu:
        args.dtype = "float32"
        args.reference_tokens = min(args.reference_tokens, args.new_tokens)
        if args.out is None:    # --out names its own folder: the files keep their plain names there
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


class PointTimeout(Exception):
    """A point ran past its wall-clock limit (--point-timeout-s, or the end of the time budget)."""


@contextlib.contextmanager
def time_limit(seconds):
    """Raise PointTimeout in the main thread after ``seconds`` (between Python statements: a CUDA call
    in flight finishes first). No limit where SIGALRM does not exist."""
    if seconds is None or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise PointTimeout(f"stopped after its {seconds:.0f} s limit")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed_runs(run, repeats, deadline, target=None):
    """One warm-up call of ``run``, then up to ``repeats`` timed calls, fewer (at least one) when the
    next would end past ``deadline`` (perf_counter seconds) at the pace of the last one, or once
    ``target`` (perf_counter seconds) has passed."""
    t0 = time.perf_counter()
    run()
    last = time.perf_counter() - t0
    runs = []
    while len(runs) < repeats:
        now = time.perf_counter()
        if runs and ((deadline is not None and now + last > deadline) or (target is not None and now > target)):
            break
        t0 = time.perf_counter()
        runs.append(run())
        last = time.perf_counter() - t0
    return runs


@torch.no_grad()
def time_engine(engine, ids, mask, steps, repeats, device, deadline=None, target=None):
    """Median (prefill s, decode s) of ``repeats`` runs after one warm-up run (graph capture, autotune),
    and the number of timed runs (fewer than ``repeats`` when they would end past ``deadline``)."""
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

    runs = timed_runs(run, repeats, deadline, target)
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), len(runs)


@torch.no_grad()
def time_hf_generate(policy, ids, mask, steps, repeats, device, deadline=None, target=None):
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

    short, long = zip(*timed_runs(lambda: (run(1), run(steps + 1)), repeats, deadline, target))
    pre, total = statistics.median(short), statistics.median(long)
    return pre, total - pre, len(short)


class OfficialStyleEngine:
    """ARGS greedy (w = 1) the way the official ARGS implementation runs it, for B rows at once.

    Policy: Hugging Face's own forward and DynamicCache, one token per step. Reward model: k full caches
    per row, i.e. a cache of B*k rows, each holding the whole sequence: every candidate's reward is a
    forward of that candidate over its own full-length copy of the sequence's K/V, with no prefix shared
    between the k; after the choice, the winner's cache is copied into all k rows (``reorder_cache``, an
    index_select over every layer, the official code's ``_reorder_cache``). The official code runs the
    reward model's first pass on k copies of prompt + candidate; here the k copies of the prompt run in
    ``prefill`` and the candidate in the first step: the same work, with the prompt part timed as prefill.
    Prompts are full length (no padding), as in this benchmark."""

    def __init__(self, policy, reward, k, w=1.0):
        self.policy, self.reward, self.k, self.w = policy, reward, k, w

    @torch.no_grad()
    def prefill(self, ids, mask, max_new_tokens):
        self.mask = mask
        out = self.policy(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        self.cache, self.logits = out.past_key_values, out.logits[:, -1].float()
        self.rmask = mask.repeat_interleave(self.k, 0)
        out = self.reward.base_model(input_ids=ids.repeat_interleave(self.k, 0), attention_mask=self.rmask,
                                     use_cache=True)
        self.rcache = out.past_key_values
        self.rows = torch.arange(ids.shape[0], device=ids.device)
        self.finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)

    @torch.no_grad()
    def step(self, uniforms, last=False):
        batch, k = self.logits.shape[0], self.k
        top_logits, top_ids = torch.topk(self.logits, k, dim=-1)
        self.rmask = torch.cat([self.rmask, self.rmask.new_ones(batch * k, 1)], 1)
        rewards = self.reward(input_ids=top_ids.reshape(batch * k, 1), attention_mask=self.rmask,
                              past_key_values=self.rcache, use_cache=True).logits.float().reshape(batch, k)
        choice = (top_logits + self.w * rewards).argmax(-1)
        token = top_ids[self.rows, choice]
        if not last:
            winner = (self.rows * k + choice).repeat_interleave(k)   # row b's k rows <- its winner's
            if hasattr(self.rcache, "reorder_cache"):
                self.rcache.reorder_cache(winner)
            else:   # a cache class without it: the same index_select, layer by layer
                for layer in self.rcache.layers:
                    layer.keys, layer.values = layer.keys.index_select(0, winner), layer.values.index_select(0, winner)
            self.mask = torch.cat([self.mask, self.mask.new_ones(batch, 1)], 1)
            out = self.policy(input_ids=token[:, None], attention_mask=self.mask, past_key_values=self.cache,
                              use_cache=True, logits_to_keep=1)
            self.logits = out.logits[:, -1].float()
        return token, rewards[self.rows, choice], self.finished


# ------------------------------------------------------------------------------------------ report
def markdown(meta, rows) -> str:
    lines = [f"# ARGS decoding benchmark ({meta['device']}, {meta['dtype']})", "",
             f"torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}, "
             f"triton {meta['versions']['triton']}, CUDA {meta['versions']['cuda']}, commit {meta['commit']}; "
             f"copy bandwidth {meta['copy_bandwidth_GBps']:.1f} GB/s (read+write, measured in this run); "
             f"median of up to {meta['repeats']} timed runs after one warm-up; greedy ARGS, w = 1, no EOS, random "
             f"full-length prompts; ms/step (= ms per generated token of a row) excludes prefill. {meta['note']}", "",
             f"Status: {meta.get('status', '')}.", "",
             "| section | model | backend | B | prompt | k | new tokens | ms/step | tokens/s | prefill ms | peak GiB | "
             "floor ms/step | x floor | speedup vs hf | x greedy | runs | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "" if v is None else format(v, f)   # noqa: E731
    for r in rows:
        lines.append(f"| {r.get('section', '')} | {r['model']} | {r['backend']} | {r['batch']} | {r['prompt']} | "
                     f"{fmt(r['k'], 'd')} | "
                     f"{r['new_tokens']} | {fmt(r.get('ms_per_step'), '.2f')} | {fmt(r.get('tokens_per_s'), '.1f')} | "
                     f"{fmt(r.get('prefill_ms'), '.1f')} | {fmt(r.get('peak_GiB'), '.2f')} | "
                     f"{fmt(r.get('floor_ms_per_step'), '.3f')} | {fmt(r.get('x_floor'), '.2f')} | "
                     f"{fmt(r.get('speedup_vs_torch'), '.2f')} | {fmt(r.get('x_greedy'), '.2f')} | "
                     f"{fmt(r.get('runs'), 'd')} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)   # a reader (or a kill) never sees half a file


def write(meta, rows, stem, out_dir=None):
    out_dir = Path(out_dir) if out_dir is not None else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_atomic(out_dir / f"{stem}.json", json.dumps({"meta": meta, "results": rows}, indent=1))
    _write_atomic(out_dir / f"{stem}.md", markdown(meta, rows))


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


# ------------------------------------------------------------------------------------------ plans
CORE = ("hf-generate", "greedy", OFFICIAL, "hf", "static", "static-triton", "static-csrc", COMPILED,
        "fused-hf", "fused-static", "fused-static-triton", "fused-static-csrc", "fused-" + COMPILED)


def session_plan(tiny: bool):
    """The GPU session's sections, in the order they run: each is (name, model, B, P, k list, new tokens,
    backends, reference new tokens or None). Tiny: the same sections on scaled-down shapes."""
    every = ORDER
    if tiny:   # Triton runs interpreted on CPU (seconds a point): its backends run in the first two sections only
        light = tuple(b for b in CORE if "triton" not in b and "csrc" not in b)
        return [dict(name="smoke", model="smollm2-135m", batch=1, prompt=8, k=[3], new_tokens=3, backends=every,
                     reference_tokens=3),
                dict(name="headline", model="llama-2-7b", batch=1, prompt=16, k=[3], new_tokens=3, backends=every,
                     reference_tokens=2),
                dict(name="batch-8", model="llama-2-7b", batch=2, prompt=16, k=[3], new_tokens=2, backends=light,
                     reference_tokens=None),
                dict(name="batch-32", model="llama-2-7b", batch=3, prompt=16, k=[3], new_tokens=2, backends=light,
                     reference_tokens=None),
                dict(name="k-40", model="llama-2-7b", batch=1, prompt=16, k=[5], new_tokens=2, backends=light,
                     reference_tokens=None),
                dict(name="opt-1.3b", model="opt-1.3b", batch=1, prompt=8, k=[3], new_tokens=2,
                     backends=light + ("reference",), reference_tokens=2)]
    return [dict(name="smoke", model="smollm2-135m", batch=1, prompt=128, k=[10], new_tokens=16, backends=every,
                 reference_tokens=8),
            dict(name="headline", model="llama-2-7b", batch=1, prompt=1024, k=[10], new_tokens=128, backends=every,
                 reference_tokens=4),
            dict(name="batch-8", model="llama-2-7b", batch=8, prompt=1024, k=[10], new_tokens=128, backends=CORE,
                 reference_tokens=None),
            dict(name="batch-32", model="llama-2-7b", batch=32, prompt=1024, k=[10], new_tokens=128, backends=CORE,
                 reference_tokens=None),
            dict(name="k-40", model="llama-2-7b", batch=1, prompt=1024, k=[40], new_tokens=128, backends=CORE,
                 reference_tokens=None),
            dict(name="opt-1.3b", model="opt-1.3b", batch=1, prompt=1024, k=[10], new_tokens=128, backends=every,
                 reference_tokens=4)]


def grid_plan(args):
    """--plan grid: one section per (model, B, P), every k; reference only at --reference-points."""
    ref_points = (None if args.reference_points == "all" else set() if args.reference_points == "none" else
                  {tuple(int(x) for x in p.split(":")) for p in args.reference_points.split(",") if p})
    sections = []
    for name in args.models:
        for batch in args.batch:
            for prompt in args.prompt:
                ref_ks = [k for k in args.k if ref_points is None or (batch, prompt, k) in ref_points]
                sections.append(dict(name=f"{name} B{batch} P{prompt}", model=name, batch=batch, prompt=prompt,
                                     k=list(args.k), new_tokens=args.new_tokens, backends=args.backends,
                                     reference_tokens=args.reference_tokens, reference_ks=ref_ks))
    return sections


def jobs_of(section, selected, compiled_names):
    """(backend, k) in the side-by-side order: baselines once, then every ARGS backend at each k."""
    backends = [b for b in ORDER if b in section["backends"] and b in selected]
    if section.get("reference_tokens") is None and "reference" in backends:
        backends.remove("reference")
    expanded = []
    for b in backends:
        if b == COMPILED:
            expanded += compiled_names or [COMPILED]   # none: one row saying so
        elif b == "fused-" + COMPILED:
            expanded += ["fused-" + n for n in compiled_names]
        else:
            expanded.append(b)
    jobs = [(b, None) for b in expanded if b in BASELINES]
    for k in section["k"]:
        for b in expanded:
            if b in BASELINES:
                continue
            if b == "reference" and k not in section.get("reference_ks", section["k"]):
                continue
            jobs.append((b, k))
    return jobs


# ------------------------------------------------------------------------------------------ self-check
def self_check_main(args) -> int:
    """The registry's self-check of every fast backend (those with self_check=True), for the head dims of
    the benchmark's shapes (64: SmolLM2-135M and OPT-1.3B; 128: Llama-2-7B) and the dtype it runs in (the
    check's engines run in float32, its attention-op check in that dtype); 1 when any fails (or, on GPU,
    cannot run)."""
    from args_fast.engine.backends import registry
    from args_fast.engine.backends import self_check as checks
    device = torch.device("cpu" if args.dry_run_cpu else "cuda")
    dtypes = [torch.float32] if args.dry_run_cpu else [getattr(torch, args.dtype)]
    head_dims = [64] if args.dry_run_cpu else [64, 128]
    fast = [name for name, b in registry.BACKENDS.items() if b.self_check]
    failed = 0
    print(f"self-check on {device}: backends {fast}, dtypes {[str(d) for d in dtypes]}, head dims {head_dims}",
          flush=True)
    for name in fast:
        for dtype in dtypes:
            for dim in head_dims:
                t0 = time.perf_counter()
                failure, _ = checks.self_check(name, registry.BACKENDS[name].build, registry.BACKENDS["static"].build,
                                               device, dtype, dim, dim)
                took = time.perf_counter() - t0
                unavailable = failure is not None and failure.startswith("BackendUnavailable")
                verdict = "ok" if failure is None else ("unavailable" if unavailable else "FAILED")
                if failure is not None and not (unavailable and args.dry_run_cpu):
                    failed += 1
                print(f"  {name:16s} {str(dtype):15s} head_dim {dim:3d}: {verdict} ({took:.1f} s)"
                      + (f": {failure}" if failure else ""), flush=True)
    print(f"self-check: {failed} failed", flush=True)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------ main
def main(argv=None):
    args = parse_args(argv)
    global ARGSDecoder, registry, build_static_engine
    if not args.dry_run_cpu and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device is visible (torch.cuda.is_available() is False); this benchmark "
                 "needs a GPU. Use --dry-run-cpu to check the script on tiny CPU shapes.")
    if args.self_check:
        return self_check_main(args)
    started = time.perf_counter()
    deadline = None if args.time_budget_s is None else started + args.time_budget_s
    from args_fast.engine.backends import registry
    from args_fast.engine.backends.static_engine import build_static_engine
    from args_fast.decoding.decoder import ARGSDecoder
    from args_fast.rewards.head import RewardHead
    from args_fast.rewards.vocab import ImplicitReward

    device = torch.device("cpu" if args.dry_run_cpu else "cuda")
    dtype = getattr(torch, args.dtype)
    bandwidth = copy_bandwidth(device, (64 if args.dry_run_cpu else 1024) * 2 ** 20)
    sections = session_plan(args.dry_run_cpu) if args.plan == "session" else grid_plan(args)
    if args.sections:
        unknown = set(args.sections) - {s["name"] for s in sections}
        if unknown:
            sys.exit(f"unknown sections {sorted(unknown)}; the plan has {[s['name'] for s in sections]}")
        sections = [s for s in sections if s["name"] in args.sections]
    compiled_names = [n for n in registry.BACKENDS if COMPILED in n]
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
            "dtype": args.dtype, "versions": versions(), "commit": git_commit(), "repeats": args.repeats,
            "copy_bandwidth_GBps": bandwidth / 1e9, "command": " ".join([sys.executable] + sys.argv),
            "plan": args.plan, "sections": [s["name"] for s in sections], "time_budget_s": args.time_budget_s,
            "point_timeout_s": args.point_timeout_s, "point_target_s": args.point_target_s, "status": "running",
            "note": ("DRY RUN on CPU with tiny models: checks the script, the numbers say nothing about GPUs. "
                     if args.dry_run_cpu else "")
                    + ("reference runs on a few new tokens only (see its rows). " if args.plan == "session" else
                       f"reference runs only at B:P:k in {args.reference_points} with {args.reference_tokens} "
                       "new tokens. ")
                    + ("" if compiled_names else "No backend named like 'compiled' is in the registry: no compiled "
                       "step rows. ")}
    stem = "bench_gpu" + (f"_{args.tag}" if args.tag else "")
    rows = []
    print(f"device {meta['device']}, {args.dtype}, copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    write(meta, rows, stem, args.out)

    def left():
        return float("inf") if deadline is None else deadline - time.perf_counter()

    def free_memory():
        if device.type == "cuda":
            gc.collect()   # the previous job's caches (tens of GB at 7B) must be gone first
            torch.cuda.empty_cache()

    def record(row, message):
        rows.append(row)
        print(f"[{time.perf_counter() - started:7.1f} s] {row.get('section', '')}: {row['model']} {row['backend']} "
              f"B={row['batch']} P={row['prompt']} k={row['k']}: {message}", flush=True)
        update_ratios(rows, row)
        write(meta, rows, stem, args.out)

    for section in sections:
        if section["model"] not in model_configs(args.dry_run_cpu):
            sys.exit(f"unknown model {section['model']!r}; choose from {list(model_configs(args.dry_run_cpu))}")
    model_name = policy = reward = head = None
    reference_lm = []
    stopped = None
    for section in sections:
        name, batch, prompt = section["model"], section["batch"], section["prompt"]
        jobs = jobs_of(section, set(args.backends), compiled_names)
        base_row = {"section": section["name"], "model": name, "batch": batch, "prompt": prompt,
                    "dtype": args.dtype, "device": meta["device"]}
        if not jobs:
            continue
        build_s = 2.0 if args.dry_run_cpu else 30.0
        if model_name != name and left() < build_s + args.min_point_s:
            stopped = stopped or f"time budget: {max(left(), 0):.0f} s left before section {section['name']}"
            for backend, k in jobs:
                record(dict(base_row, backend=backend, k=k, new_tokens=section["new_tokens"],
                            note=f"not run: {stopped}"), "not run (time budget)")
            continue
        if model_name != name:
            model_name = policy = reward = head = None
            reference_lm.clear()
            free_memory()
            t0 = time.perf_counter()
            try:
                policy, reward = build_models(name, args.dry_run_cpu, dtype, device)
                head = RewardHead(policy, reward.score.weight.detach())
            except Exception as exc:   # e.g. out of memory on a smaller card: this section's rows say so
                traceback.print_exc()
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                policy = reward = head = exc = None
                free_memory()
                for backend, k in jobs:
                    record(dict(base_row, backend=backend, k=k, new_tokens=section["new_tokens"],
                                note=f"not run: building the {name} models failed ({why})"), "not run")
                continue
            model_name = name
            print(f"built {name} (policy + reward) in {time.perf_counter() - t0:.1f} s", flush=True)

        def implicit_reward():   # built on first use: at 7B it is another 13 GB
            if not reference_lm:
                reference_lm.append(build_models(name, args.dry_run_cpu, dtype, device, seed=2, lm_only=True)[0])
            reward_ = ImplicitReward(policy, reference_lm[0], 1.0)
            reward_.check(policy)
            return reward_
        w_policy, w_reward = streamed_weight_bytes(policy), streamed_weight_bytes(reward)
        g = torch.Generator(device="cpu").manual_seed(batch * 1000 + prompt)
        ids = torch.randint(3, policy.config.vocab_size, (batch, prompt), generator=g).to(device)
        mask = torch.ones_like(ids)
        for backend, k in jobs:
            steps = section["reference_tokens"] if backend == "reference" else section["new_tokens"]
            row = dict(base_row, backend=backend, k=k, new_tokens=steps)
            if left() < args.min_point_s:
                stopped = stopped or f"time budget: {max(left(), 0):.0f} s left in section {section['name']}"
                row["note"] = f"not run: {stopped}"
                record(row, "not run (time budget)")
                continue
            if backend == COMPILED:   # the registry has no compiled-step backend
                row["note"] = ("skipped: no backend named like 'compiled' in the registry (it has "
                               f"{', '.join(registry.BACKENDS)})")
                record(row, "skipped (no compiled backend)")
                continue
            kv_slots = prompt + steps / 2          # mean attended length over the decode
            floor_bytes = w_policy + kv_bytes_per_slot(policy, batch) * kv_slots
            fused, implicit = backend.startswith("fused-"), backend.startswith("implicit-")
            if fused:     # one model; its cache also holds the k candidate slots
                floor_bytes += kv_bytes_per_slot(policy, batch) * k
            elif implicit:   # the reference LM's weights and cache, read once per token
                floor_bytes += w_policy + kv_bytes_per_slot(policy, batch) * kv_slots
            elif k is not None:   # the task's floor (prefix read once), for official-style too
                floor_bytes += w_reward + kv_bytes_per_slot(reward, batch) * (kv_slots + k)
            row["floor_ms_per_step"] = 1e3 * floor_bytes / bandwidth
            if backend == OFFICIAL and device.type == "cuda":
                # k full reward caches of P + T slots (+ a layer's copy while the cache grows and is
                # reordered), and room for the prompt pass on B*k rows
                need = 1.25 * kv_bytes_per_slot(reward, batch * k) * (prompt + steps) + 4 * 2 ** 30
                free_memory()
                free = torch.cuda.mem_get_info(device)[0]
                if need > free:
                    row["note"] = (f"skipped: its k full reward caches need about {need / 2 ** 30:.1f} GiB, "
                                   f"{free / 2 ** 30:.1f} GiB free")
                    record(row, "skipped (memory)")
                    continue
            engine = None
            free_memory()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            point_start = time.perf_counter()
            limit = min(args.point_timeout_s, left())
            point_deadline = point_start + 0.8 * limit
            target = None if args.point_target_s is None else point_start + args.point_target_s
            try:
                with time_limit(limit):
                    if backend == "hf-generate":
                        pre, dec, runs = time_hf_generate(policy, ids, mask, steps, args.repeats, device,
                                                             point_deadline, target)
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
                        elif backend == OFFICIAL:
                            engine = OfficialStyleEngine(policy, reward, k)
                            row["note"] = ("official ARGS loop: HF caches, k full reward caches per row, winner's "
                                           "cache copied into all k each step")
                        else:
                            name_, scorer, kind = ((backend[len("fused-"):], head, "head") if fused else
                                                   (backend[len("implicit-"):], implicit_reward(), "vocab")
                                                   if implicit else (backend, reward, "cached"))
                            if name_.startswith("static") or COMPILED in name_:
                                reason = registry.unavailable_reason(
                                    name_, registry.Models(policy, scorer, kind),
                                    registry.Options(k=k, w=1.0, temperature=1.0, eos_ids=None, pad_id=0))
                                if reason is not None:
                                    row["note"] = f"skipped: {reason}"
                                    record(row, f"skipped ({reason})")
                                    continue
                            engine = args_engine(name_, policy, scorer, k=k, max_new_tokens=steps,
                                                 batch=batch, prompt=prompt)
                            if getattr(engine, "use_graph", False):
                                row["note"] = "one CUDA graph per step"
                        pre, dec, runs = time_engine(engine, ids, mask, steps, args.repeats, device,
                                                       point_deadline, target)
                        del engine
            except (torch.OutOfMemoryError, PointTimeout, Exception) as exc:
                kind_ = ("out of memory" if isinstance(exc, torch.OutOfMemoryError) else
                         "timed out" if isinstance(exc, PointTimeout) else "error")
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                if kind_ == "error":
                    traceback.print_exc()
                engine = exc = None   # a live engine (or the traceback's frames) would keep its caches
                free_memory()
                row["note"] = f"{kind_} after {time.perf_counter() - point_start:.1f} s: {message}"
                record(row, kind_)
                continue
            row["wall_s"] = time.perf_counter() - point_start
            row["runs"] = runs
            if dec <= 0:   # a difference of two timings below the clock's resolution: no number
                row["note"] = row.get("note", "") + f"; decode time not resolved ({dec:.2e} s), no figure"
                record(row, "decode time not resolved")
                continue
            ms = 1e3 * dec / steps
            row.update(ms_per_step=ms, tokens_per_s=batch * steps / dec,
                       prefill_ms=1e3 * pre, x_floor=ms / row["floor_ms_per_step"])
            if device.type == "cuda":
                row["peak_GiB"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            record(row, f"{ms:.2f} ms/step, {row['tokens_per_s']:.1f} tok/s, {row['x_floor']:.2f}x floor, "
                        f"{runs} timed run(s), {row['wall_s']:.1f} s")
        reference_lm.clear()   # the implicit rows' extra LM (13 GB at 7B) is not kept for the next section
    policy = reward = head = None
    free_memory()
    meta["status"] = f"stopped early ({stopped})" if stopped else "complete"
    meta["wall_s"] = time.perf_counter() - started
    write(meta, rows, stem, args.out)
    out_dir = args.out if args.out is not None else RESULTS
    print(f"{meta['status']} in {meta['wall_s']:.0f} s; wrote {out_dir / stem}.json and .md", flush=True)
    return 0


def update_ratios(rows, row):
    """Side-by-side ratios within the row's (section, model, B, P): speedup over the hf backend at the same
    k, and the ARGS cost over the static engine's plain greedy decode."""
    same = [r for r in rows if r.get("section") == row.get("section") and r["model"] == row["model"]
            and r["batch"] == row["batch"] and r["prompt"] == row["prompt"]]
    greedy = next((t for t in same if t["backend"] == "greedy" and t.get("ms_per_step")), None)
    for r in same:
        if not r.get("ms_per_step") or r["k"] is None:
            continue
        base = next((t for t in same if t["k"] == r["k"] and t["backend"] == "hf" and t.get("ms_per_step")), None)
        if base is not None:
            r["speedup_vs_torch"] = base["ms_per_step"] / r["ms_per_step"]
        if greedy is not None:   # ARGS cost over the same engine's greedy
            r["x_greedy"] = r["ms_per_step"] / greedy["ms_per_step"]


if __name__ == "__main__":
    sys.exit(main())
