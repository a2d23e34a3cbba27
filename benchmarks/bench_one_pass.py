"""One pass per token on the embedded default models, CPU: fused ARGS vs the unfused path vs HF greedy.

    .venv/bin/python benchmarks/bench_one_pass.py [--rounds 5] [--new-tokens 64]

Setting (issue "One pass per token"): the embedded SmolLM2-135M-Instruct policy and our reward head,
float32, chat prompts of exactly 256 tokens (chitchat test conversations), 64 new tokens, k = 10,
w = 1, B = 1 and 4, no early stop. Rows, each one ``generate`` call per round, timed side by side in
one process, the order rotated every round; medians over rounds:

* ``hf_greedy_generate``: ``policy.generate`` (greedy), the baseline;
* ``fused_hf`` / ``fused_static``: ARGS with the default reward model sharing the policy's backbone
  (``args_fast.models.load_models()``): one policy pass of the k candidates per token;
* ``unfused_hf``: ARGS with the same reward model holding its own copy of the backbone (how the
  defaults loaded before): a policy decode plus a reward pass of the k candidates per token;
* ``implicit_hf``: ARGS with ``ImplicitReward(policy, reference, beta=1)``, the policy being the tuned
  model: one extra decode of the reference per token. The reference is a second 135M model (the
  policy plus Gaussian noise of 1% of each tensor's std, seed 0): a stand-in for a DPO reference;
  the cost does not depend on its weights.

The fused and unfused tokens are compared; where they differ, the first differing step of the row is
recomputed the literal way (unfused models, full forwards) and the gap between the two best ARGS
scores there is reported. Peak memory: each method once more in a fresh subprocess (load its models,
one B = 4 generate), peak RSS of that process (``ru_maxrss``). Run it on a quiet machine; writes
benchmarks/results/bench_one_pass_cpu.{md,json}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import args_fast  # noqa: E402
from args_fast import default_models  # noqa: E402
from args_fast.loading import load_models, weight_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PROMPT, K, W, BETA = 256, 10, 1.0, 1.0
METHODS = ("hf_greedy_generate", "fused_hf", "fused_static", "unfused_hf", "implicit_hf")


def prompts(tokenizer, batch: int) -> torch.Tensor:
    """``batch`` chat prompts of exactly PROMPT tokens: turns of chitchat test conversations as one user
    message, its text cut to fit inside the chat template."""
    from args_fast.data.chitchat import conversations
    marker = "\u2063MSG\u2063"
    templated = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                              add_generation_prompt=True)
    head, tail = (tokenizer(part, add_special_tokens=False).input_ids for part in templated.split(marker))
    rows = []
    for _, conv in conversations("test"):
        text = " ".join(m["text"] for turn in conv["messages"] for m in turn)
        body = tokenizer(text, add_special_tokens=False).input_ids
        room = PROMPT - len(head) - len(tail)
        if len(body) >= room:
            rows.append(head + body[:room] + tail)
        if len(rows) == batch:
            return torch.tensor(rows)
    raise RuntimeError("not enough long conversations")


def reference_lm(policy):
    ref = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.01 * float(p.std()) if p.numel() > 1 else 0.0))
    return ref


def build(method: str):
    """(callable ids -> generated ids (B, T), what was loaded) for one method, models loaded inside."""
    loaded = load_models()
    policy = loaded.policy
    if method == "hf_greedy_generate":
        def run(ids, new):
            out = policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=new, min_new_tokens=new, pad_token_id=loaded.tokenizer.pad_token_id)
            return out[:, ids.shape[1]:], None
        return run, loaded
    if method.startswith("fused"):
        reward = loaded.reward   # on the policy's own backbone
    elif method == "unfused_hf":
        reward = default_models.load_default_reward()   # its own copy of the backbone
    else:
        reward = args_fast.ImplicitReward(policy, reference_lm(policy), BETA)
    backend = method.rsplit("_", 1)[1]
    decoder = args_fast.ARGSDecoder(policy, reward, k=K, w=W, eos_token_id=[], backend=backend)
    expect = {"fused_hf": "head", "fused_static": "head", "unfused_hf": "cached", "implicit_hf": "vocab"}[method]
    assert decoder.reward_kind == expect, (method, decoder.reward_kind)

    def run(ids, new):
        out = decoder.generate(ids, max_new_tokens=new)
        return out.sequences[:, ids.shape[1]:], out.rewards
    run.description = decoder.backend_description
    run.reward, run.engine = reward, decoder.engine
    return run, loaded


def near_tie(loaded, separate_reward, ids, fused, unfused):
    """For each row whose fused and unfused tokens differ: the first differing step, recomputed with
    full forwards of the unfused models: the two best ARGS scores and their gap."""
    report = []
    policy = loaded.policy
    for b in range(ids.shape[0]):
        diff = (fused[b] != unfused[b]).nonzero()
        if not len(diff):
            continue
        t = int(diff[0])
        context = torch.cat([ids[b], fused[b, :t]])[None]
        with torch.no_grad():
            logits = policy(context).logits[0, -1].float()
            top_logits, top_ids = torch.topk(logits, K)
            seqs = torch.cat([context.expand(K, -1), top_ids[:, None]], 1)
            hidden = separate_reward.base_model(input_ids=seqs).last_hidden_state[:, -1]
            rewards = separate_reward.score(hidden).squeeze(-1).float()
        scores = (top_logits + W * rewards).double()
        best = torch.topk(scores, 2)
        report.append(dict(row=b, step=t, fused_token=int(fused[b, t]), unfused_token=int(unfused[b, t]),
                           best_two=[int(top_ids[i]) for i in best.indices],
                           score_gap=float(best.values[0] - best.values[1])))
    return report


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def kv_caches(obj, depth: int = 0, seen=None) -> list:
    """Every static KV cache an engine holds, found through its attributes (runners, taps, lists)."""
    from args_fast.engine.kv_cache import StaticKVCache
    seen = set() if seen is None else seen
    if obj is None or id(obj) in seen or depth > 5 or isinstance(obj, (torch.nn.Module, torch.Tensor)):
        return []
    seen.add(id(obj))
    if isinstance(obj, StaticKVCache):
        return [obj]
    children = obj if isinstance(obj, (list, tuple)) else list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    return [c for child in children for c in kv_caches(child, depth + 1, seen)]


def memory_child(method: str, new: int) -> None:
    """What one method holds: the bytes of its distinct weight tensors and of its engine's caches after a
    B = 4 generate, and the process's resident set then (VmRSS) and at its peak (VmHWM, loading included)."""
    import gc
    run, loaded = build(method)
    ids = prompts(loaded.tokenizer, 4)
    run(ids, new)
    gc.collect()
    reward = getattr(run, "reward", None)
    models = [loaded.policy] + ([m for _, m in reward.extra_models()] if hasattr(reward, "extra_models") else [reward])
    cache = sum(c.nbytes() for c in kv_caches(getattr(run, "engine", None)))
    print(json.dumps({"weights_mb": weight_bytes(*models) / 2**20, "kv_cache_mb": cache / 2**20,
                      "rss_after_mb": _status_mb("VmRSS"), "peak_rss_mb": _status_mb("VmHWM")}))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {METHODS} (hf_greedy_generate is always run, as the baseline)")
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument("--memory-child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true", help="no memory subprocesses")
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.new_tokens)
    command = "python benchmarks/bench_one_pass.py " + " ".join(sys.argv[1:])
    chosen = set(args.methods.split(",")) | {"hf_greedy_generate"}
    if chosen - set(METHODS):
        parser.error(f"unknown methods {sorted(chosen - set(METHODS))}")
    methods = tuple(m for m in METHODS if m in chosen)
    runs = {m: build(m) for m in methods}
    tokenizer = runs["hf_greedy_generate"][1].tokenizer
    ms, tokens_same, ties, descriptions = {}, {}, {}, {}
    # 1-minute load average after each round: ~1-2 is this process alone on 2 cores; more means another
    # job shared the machine and the ratios are suspect
    load = {f"B={b}": [] for b in args.batches}
    for method, (run, _) in runs.items():
        descriptions[method] = getattr(run, "description", "transformers generate, greedy")
    for batch in args.batches:
        ids = prompts(tokenizer, batch)
        times = {m: [] for m in methods}
        outputs = {}
        for m in methods:   # warm-up call, and the tokens of each method
            outputs[m] = runs[m][0](ids, args.new_tokens)[0]
        for r in range(args.rounds):
            order = methods[r % len(methods):] + methods[:r % len(methods)]
            for m in order:
                start = time.perf_counter()
                runs[m][0](ids, args.new_tokens)
                times[m].append(time.perf_counter() - start)
            load[f"B={batch}"].append(os.getloadavg()[0])
        for m in methods:
            ms[f"{m}/B={batch}"] = {"median_ms_per_token": 1000 * statistics.median(times[m]) / args.new_tokens,
                                    "seconds": times[m]}
        pairs = [(a, b) for a, b in (("fused_hf", "unfused_hf"), ("fused_static", "unfused_hf"), ("fused_hf", "fused_static"))
                 if a in outputs and b in outputs]
        tokens_same[batch] = {f"{a} == {b}": torch.equal(outputs[a], outputs[b]) for a, b in pairs}
        ties[batch] = {a: near_tie(runs[b][1], runs[b][0].reward, ids, outputs[a], outputs[b])
                       for a, b in pairs if b == "unfused_hf"}
        print(batch, {m: round(ms[f"{m}/B={batch}"]["median_ms_per_token"], 1) for m in methods}, tokens_same[batch],
              load[f"B={batch}"], flush=True)
    del runs
    memory = {}
    for m in ([] if args.skip_memory else methods):
        out = subprocess.run([sys.executable, __file__, "--memory-child", m, "--new-tokens", str(args.new_tokens)],
                             capture_output=True, text=True, check=True)
        memory[m] = json.loads(out.stdout.strip().splitlines()[-1])
    meta = dict(machine=cpu_name(), cores=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                transformers=transformers.__version__, python=platform.python_version(),
                policy=f"{default_models.POLICY_NAME} (SmolLM2-135M-Instruct, float32)", dtype="float32", prompt=PROMPT,
                new_tokens=args.new_tokens, k=K, w=W, beta=BETA, rounds=args.rounds, command=command,
                load_average_after_each_round=load,
                unit="ms per generated token (whole generate call / new tokens), median over rounds")
    lines = ["# One pass per token, CPU: embedded default models", "",
             f"- machine: {meta['machine']}, {meta['cores']} cores, {meta['torch_threads']} torch threads; torch "
             f"{meta['torch']}, transformers {meta['transformers']}, python {meta['python']}",
             f"- policy {meta['policy']}; reward: the shipped score head on its backbone; prompts of {PROMPT} tokens "
             f"(chitchat test conversations, chat template), {args.new_tokens} new tokens, k = {K}, w = {W}, "
             f"no early stop; median of {args.rounds} rounds, methods interleaved, order rotated per round",
             *([f"- implicit reward: ImplicitReward(policy, reference, beta={BETA}), policy = tuned model; reference = "
                "the policy + N(0, (1% of each tensor's std)^2) noise, a second 135M model"] if "implicit_hf" in methods else []),
             f"- command: `{command}`", "",
             "| B | " + " | ".join(f"{m} ms/tok" for m in methods) + " | "
             + " | ".join(f"{m} / HF greedy" for m in methods[1:]) + " |",
             "|---|" + "---|" * (2 * len(methods) - 1)]
    for batch in args.batches:
        v = {m: ms[f"{m}/B={batch}"]["median_ms_per_token"] for m in methods}
        g = v["hf_greedy_generate"]
        lines.append(f"| {batch} | " + " | ".join(f"{v[m]:.1f}" for m in methods) + " | "
                     + " | ".join(f"{v[m] / g:.2f}x" for m in methods[1:]) + " |")
    lines += ["", "ms per generated token. Same tokens as the unfused path:", ""]
    for batch in args.batches:
        flips = [f"{name}: row {t['row']} step {t['step']}, score gap {t['score_gap']:.3g}"
                 for name, found in ties[batch].items() for t in found]
        lines.append(f"- B = {batch}: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in tokens_same[batch].items())
                     + (f"; near-tie flips: {'; '.join(flips)}" if flips else ""))
    lines += ["", "Memory of a fresh process that loads the method's models and runs one B = 4 generate: distinct "
              "weight tensors, the engine's KV caches, resident set after the run and at its peak (loading "
              "transients included):", "",
              "| method | weights MB | KV caches MB | RSS after MB | peak RSS MB |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {v['weights_mb']:.0f} | {'(DynamicCache, freed with the call)' if m == 'hf_greedy_generate' else format(v['kv_cache_mb'], '.1f')} | {v['rss_after_mb']:.0f} | {v['peak_rss_mb']:.0f} |"
              for m, v in memory.items()]
    lines += ["", f"1-minute load average after each round (2 cores; ~1-2 is this benchmark alone): {load}"]
    lines += ["", "What ran:", ""] + [f"- {m}: {descriptions[m]}" for m in methods]
    RESULTS.mkdir(exist_ok=True)
    stem = "bench_one_pass_cpu" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {**meta, "ms_per_token": ms, "same_tokens": tokens_same, "near_tie_flips": ties, "peak_rss_mb": memory,
         "what_ran": descriptions}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
