"""``args-fast pareto``: a positivity-vs-relevance trade-off front from ARGS and the training-time methods.

On the same held-out prompts, decoded greedily to the same length, and scored by the same rewards and
judges, one cell per (method, preference lambda), lambda = the weight of positivity, 1 - lambda that
of relevance, on an even grid of the simplex:

* ``args``: ARGS-greedy with both rewards normalised (mean and std of each over the policy's greedy
  replies to calibration prompts, :func:`args_fast.calibrate`), ``w = W * (lambda, 1 - lambda)``;
  lambda = 1 and 0 are single-objective ARGS;
* ``rs`` (Rewarded Soups): the two per-objective LoRA policies' weights interpolated,
  ``W_0 + lambda * dW_pos + (1 - lambda) * dW_rel``, decoded greedily;
* ``mod`` (MOD): greedy decoding of ``lambda * log pi_pos + (1 - lambda) * log pi_rel``, the same two policies;
* ``ric`` (Rewards-in-Context): the RiC-tuned policy, the desired rewards RiC's map gives for
  (lambda, 1 - lambda) written after the user's message, decoded greedily;
* ``greedy``: the base policy, a reference point.

Every cell is scored on the user's message + the reply (never the RiC tags) by: both rewards (the
decoding heads, raw), both labellers the rewards were trained from (VADER; MiniLM cosine of message and
reply, ``coherence``) and a held-out judge per objective that no training or selection used (MiniLM
zero-shot positivity; TF-IDF cosine of message and reply). Files in ``--out-dir``: ``cells/<cell>.jsonl``
(the official ARGS fields, every reward and judge, one line per prompt), ``pareto.json``, ``pareto.md``
(per-cell means, each method's hypervolume above a stated reference point, a cost table) and
``front.png``. A finished cell is never recomputed: a rerun with the same settings reuses it, and an
interrupted cell resumes from its finished batches (``.partial/``).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from . import metrics
from ..integrations import parallel
from .methods import Method
from .run import Evaluation
from ..integrations.run_files import command_line, info, read_json, read_jsonl, releases_locks, write_jsonl
from ..loading import check_model_dir, compile_of, model_source
from ..validation import UserError
from ..decoding.decoder import ARGSDecoder
from ..decoding.inputs import cut_at_eos, encode_prompts
from ..loading import fingerprint, model_fingerprints, weight_bytes

METHODS = ("greedy", "args", "rs", "mod", "ric")
ADAPTERS = {"rs": ("positivity", "relevance"), "mod": ("positivity", "relevance"), "ric": ("ric",)}
# (x, y) = (positivity, relevance) in each space the front is drawn and measured in
SPACES = {"held-out judges": ("minilm_positivity", "tfidf_relevance"),
          "labellers": ("vader", "coherence"),
          "decoding rewards": ("reward", "reward_relevance")}
LABELS = {"minilm_positivity": "MiniLM positivity (held out)", "tfidf_relevance": "TF-IDF relevance (held out)",
          "vader": "VADER (positivity labeller)", "coherence": "MiniLM relevance (relevance labeller)",
          "reward": "positivity reward (raw)", "reward_relevance": "relevance reward (raw)"}
NAMES = {"greedy": "greedy", "args": "ARGS (preference-weighted)", "rs": "Rewarded Soups", "mod": "MOD",
         "ric": "Rewards-in-Context"}


def lambda_grid(n: int) -> list[float]:
    """``n`` evenly spaced weights of positivity in [0, 1], both ends included."""
    return [round(i / (n - 1), 6) for i in range(n)]


def _method_names(text: str) -> list[str]:
    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise UserError(f"--methods must be a comma-separated subset of {','.join(METHODS)}, got {text!r}")
    return names


def adapter_dir(given: str | None) -> Path:
    """``--adapters``, or by default ``adapters/`` in the args_fast cache ($ARGS_FAST_CACHE or
    ~/.cache/args_fast): never a path relative to the working directory."""
    if given is not None:
        return Path(given)
    from ..default_models import cache_root
    return cache_root() / "adapters"


class ParetoEvaluation(Evaluation):
    """The evaluation's models and prompts plus the second reward, the adapters and the extra judges."""

    def __init__(self, args, command: str):
        self.methods = _method_names(args.methods)
        if args.implicit_reference or args.token_reward:
            raise UserError("pareto's rewards are sequence rewards: use --reward-model / --relevance-reward-model")
        if (args.reward_model is None) != (args.relevance_reward_model is None):
            raise UserError("give both --reward-model and --relevance-reward-model, or neither (the embedded heads)")
        check_model_dir("--relevance-reward-model", args.relevance_reward_model)
        self.adapter_dir = adapter_dir(args.adapters)
        from ..training.lora_sft import PEFT_CONFIG, PEFT_WEIGHTS
        for method in self.methods:
            for name in ADAPTERS.get(method, ()):
                for file in (PEFT_CONFIG, PEFT_WEIGHTS):
                    if not (self.adapter_dir / name / file).is_file():
                        script = "train_ric.py" if name == "ric" else "train_soups.py"
                        given = args.adapters if args.adapters is not None else f"{self.adapter_dir} (the default)"
                        raise UserError(f"--adapters {given}: {name}/{file} is missing (method {method}; made by "
                                        f"results/objectives/{script}; in a checkout: --adapters "
                                        "results/objectives/adapters)")
        self.lambdas = lambda_grid(args.lambdas)
        super().__init__(args, command)
        if "args" in self.methods:
            self.check_k([args.k])
        # the relevance reward model is identified by its files' content, as the others (read before it loads)
        self.model_files.update(model_fingerprints(relevance_reward_model=args.relevance_reward_model))
        self.rewards = [self.reward, self._relevance_reward()]
        self.check_requests("args" in self.methods, [("relevance reward model", self.rewards[1])])
        self.tfidf = metrics.TfidfRelevance()
        self.adapters, self.adapter_meta, self._models = {}, {}, {}
        from ..training.lora_sft import load_adapter
        for name in sorted({n for m in self.methods for n in ADAPTERS.get(m, ())}):
            self.adapters[name], self.adapter_meta[name] = load_adapter(self.adapter_dir / name)
        # what the cells depend on besides the base setup, hashed once (setup_key is asked per cell)
        self.file_hashes = {"adapters": {n: fingerprint(self.adapter_dir / n / PEFT_WEIGHTS) + "+" +
                                         fingerprint(self.adapter_dir / n / PEFT_CONFIG) for n in self.adapters}}
        if args.relevance_reward_model is None:
            from ..default_models import objective_dir
            self.file_hashes["relevance_head"] = fingerprint(objective_dir("relevance") / "reward_score.safetensors")
        self.normalised = None
        self._seen_prompts = {}

    def _relevance_reward(self):
        args = self.args
        if args.relevance_reward_model is None:
            from ..default_models import load_default_reward
            shares = args.policy is None
            reward = load_default_reward(dtype=next(self.policy.parameters()).dtype, objective="relevance",
                                         policy=self.policy if shares else None)
            return reward if shares else reward.to(self.policy.device)
        from ..loading import SCORE_MODEL, load_pretrained
        path = args.relevance_reward_model
        try:
            reward = load_pretrained("--relevance-reward-model", model_source(path), SCORE_MODEL,
                                     dtype=next(self.policy.parameters()).dtype)
        except OSError as err:
            raise UserError(f"could not load --relevance-reward-model {path}: {str(err).splitlines()[0]}") from err
        if reward.config.vocab_size != self.policy.config.vocab_size:
            raise UserError(f"--relevance-reward-model {path} has another vocabulary than the policy's; pareto "
                             "scores token ids with it, so it needs the policy's vocabulary")
        self.model_names["relevance_reward_model"] = path
        return reward.eval().to(self.policy.device)

    # ------------------------------------------------------------------ setup
    def setup_key(self) -> dict:
        a = self.args
        return {**super().setup_key(), "k": a.k, "w": a.w, "lambdas": self.lambdas,
                "calibration_prompts": a.calibration_prompts,
                "relevance_reward_model": a.relevance_reward_model or "default", **self.file_hashes}

    def calibrate(self, path: Path) -> list[dict]:
        """Each reward's mean and std over the policy's greedy replies to the calibration contexts, kept in
        ``path`` (reused while the models and settings are the same)."""
        from ..rewards.normalization import NormalizedReward
        from ..decoding.calibration import calibrate
        from ..training.reward_heads import contexts_of
        key = {"models": self.model_names, "model_files": self.model_files, "calibration_prompts": self.args.calibration_prompts,
               "max_new_tokens": self.args.max_new_tokens, "relevance": self.file_hashes.get("relevance_head")}
        saved = read_json(path)   # missing or damaged: computed again
        if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("stats"), list):
            start = time.perf_counter()
            ids, mask = encode_prompts(self.tokenizer, contexts_of("val", self.args.calibration_prompts, seed=1),
                                       chat_template=True)
            stats = []
            for reward in self.rewards:
                n = calibrate(self.policy, reward, ids, mask, max_new_tokens=self.args.max_new_tokens,
                              tokenizer=self.tokenizer, eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
                stats.append({"mean": n.mean, "std": n.std})
            saved = {"key": key, "stats": stats, "seconds": round(time.perf_counter() - start, 1)}
            if self.world.is_main:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(saved, indent=1) + "\n")
                tmp.replace(path)
        self.normalised = [NormalizedReward(r, s["mean"], s["std"]) for r, s in zip(self.rewards, saved["stats"])]
        return saved

    # ------------------------------------------------------------------ decoding
    def _copy_with(self, name: str, adapters, lambdas):
        """A copy of the policy with the adapters' weighted sum merged in (cached per ``name``)."""
        from ..training.baselines import base_weights, interpolate_lora
        if name not in self._models:
            model = copy.deepcopy(self.policy)
            names = set().union(*(a.keys() for a in adapters))
            self._models[name] = (model, base_weights(model, names))
        model, base = self._models[name]
        interpolate_lora(model, base, adapters, lambdas)
        return model

    def decoder_of(self, method: Method):
        lam = method.options.get("lambda")
        pos, rel = self.adapters.get("positivity"), self.adapters.get("relevance")
        if method.name == "args-greedy":
            a = self.args
            return ARGSDecoder(self.policy, self.normalised, k=a.k, w=[a.w * lam, a.w * (1 - lam)], mode="greedy",
                               max_new_tokens=a.max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                               backend=a.backend, tokenizer=self.tokenizer, compile=compile_of(a))
        if method.name == "rs":
            return self._copy_with("soup", [pos, rel], [lam, 1 - lam])
        if method.name == "mod":   # a policy with zero weight adds nothing: not decoded at all
            chosen = [(self._copy_with(n, [self.adapters[n]], [1.0]), x)
                      for n, x in (("positivity", lam), ("relevance", 1 - lam)) if x > 0]
            return [m for m, _ in chosen], [x for _, x in chosen]
        if method.name == "ric":
            return self._copy_with("ric", [self.adapters["ric"]], [1.0])
        return None

    def decode_batch(self, method: Method, j: int, generator, decoder):
        chunk, ids, mask, _ = self.batches[j]
        common = {"max_new_tokens": self.args.max_new_tokens, "eos_ids": self.eos_ids, "pad_id": self.pad_id,
                  "generator": generator}
        from .methods import run_batch
        if method.name == "args-greedy":
            out = decoder.generate(ids, mask)
            return cut_at_eos(out.sequences[:, ids.shape[1]:], self.eos_ids)
        if method.name == "rs":
            return run_batch(Method("greedy"), decoder, None, self.tokenizer, ids, mask, **common)
        if method.name == "mod":
            from ..training.baselines import mod_generate
            models, lambdas = decoder
            out = mod_generate(models, lambdas, ids, mask, max_new_tokens=self.args.max_new_tokens,
                               eos_ids=self.eos_ids, pad_id=self.pad_id)
            return cut_at_eos(out[:, ids.shape[1]:].cpu(), self.eos_ids)
        if method.name == "ric":
            from ..training.baselines import ric_prompt
            texts = [ric_prompt(p["prompt"], method.options["desired_rewards"]) for p in chunk]
            ric_ids, ric_mask = encode_prompts(self.tokenizer, texts, chat_template=True)
            self._seen_prompts[j] = [self.tokenizer.decode(r[m.bool()].tolist()) for r, m in zip(ric_ids, ric_mask)]
            return run_batch(Method("greedy"), decoder, None, self.tokenizer, ric_ids, ric_mask, **common)
        return super().decode_batch(method, j, generator, decoder)

    def generate_batch(self, method: Method, j: int, decoder=None, label: str | None = None) -> list[dict]:
        records = super().generate_batch(method, j, decoder, label)
        seen = self._seen_prompts.pop(j, None)
        for r, text in zip(records, seen or ()):   # RiC: the prompt the policy saw carries the tags
            r.update(prompt=text, response=text + r["result"])
        return records

    def score(self, records: list[dict]) -> list[dict]:
        ids = [r["_ids"] for r in records]
        relevance = metrics.score_sequences(self.rewards[1], ids, self.pad_id)
        records = super().score(records)   # reward (positivity), coherence (MiniLM relevance), judges
        tfidf = self.tfidf([r["user_message"] for r in records], [r["result"] for r in records])
        for r, rel, tf in zip(records, relevance, tfidf):
            r.update(reward_relevance=rel, tfidf_relevance=tf, **{"lambda": r["options"].get("lambda")})
        return records


# --------------------------------------------------------------------------------------- the cells
def cells_of(ev: ParetoEvaluation) -> list[tuple[str, Method]]:
    """(cell name, method) for every cell, in run order."""
    from ..training.baselines import ric_targets
    out = []
    for name in ev.methods:
        if name == "greedy":
            out.append(("greedy", Method("greedy")))
            continue
        for lam in ev.lambdas:
            options = {"lambda": lam}
            if name == "args":
                options.update(k=ev.args.k, w=[round(ev.args.w * lam, 6), round(ev.args.w * (1 - lam), 6)])
            if name == "ric":
                meta = ev.adapter_meta["ric"]
                options["desired_rewards"] = [round(x, 2) for x in ric_targets([lam, 1 - lam], meta["lows"],
                                                                               meta["highs"])]
            out.append((f"{name}-lambda{lam:.3f}", Method("args-greedy" if name == "args" else name, options)))
    return out


MEASURES = ("minilm_positivity", "tfidf_relevance", "vader", "coherence", "reward", "reward_relevance",
            "harmlessness", "diversity", "num_tokens")


def summarize_cell(name: str, method: str, records: list[dict]) -> dict:
    tokens = sum(r["num_tokens"] for r in records)
    seconds = sum(r["elapsed"] for r in records)   # elapsed = the batch's wall time / its rows
    return {"cell": name, "method": method, "lambda": records[0].get("lambda"), "options": records[0]["options"],
            **{m: metrics.mean_se([r[m] for r in records]) for m in MEASURES},
            "seconds": seconds, "ms_per_token": 1000 * seconds / max(tokens, 1)}


def hypervolumes(cells: list[dict], per_prompt: dict, resamples: int = 1000, seed: int = 0) -> dict:
    """Per space: the reference point (the worst mean of each coordinate over every cell of every
    method), each method's hypervolume above it, and its spread over prompts: a paired bootstrap (the
    same resampled prompts for every cell, the reference fixed) gives a 95% interval per method and,
    per pair of methods, the share of resamples in which the first's hypervolume is larger."""
    import numpy as np

    from ..training.baselines import hypervolume_2d
    methods = list(dict.fromkeys(c["method"] for c in cells))
    n = len(next(iter(per_prompt.values()))["minilm_positivity"])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    out = {}
    for space, (x, y) in SPACES.items():
        ref = (min(c[x][0] for c in cells), min(c[y][0] for c in cells))

        def volumes(xs, ys):
            return {m: hypervolume_2d([(xs[c["cell"]], ys[c["cell"]]) for c in cells if c["method"] == m], ref)
                    for m in methods}
        point = volumes({c["cell"]: c[x][0] for c in cells}, {c["cell"]: c[y][0] for c in cells})
        boot = {m: [] for m in methods}
        values = {c["cell"]: (np.asarray(per_prompt[c["cell"]][x]), np.asarray(per_prompt[c["cell"]][y]))
                  for c in cells}
        for idx in draws:
            v = volumes({k: float(a[idx].mean()) for k, (a, _) in values.items()},
                        {k: float(b[idx].mean()) for k, (_, b) in values.items()})
            for m in methods:
                boot[m].append(v[m])
        interval = {m: [float(np.percentile(boot[m], 2.5)), float(np.percentile(boot[m], 97.5))] for m in methods}
        larger = {f"{a} > {b}": float(np.mean(np.asarray(boot[a]) > np.asarray(boot[b])))
                  for a in methods for b in methods if a != b}
        out[space] = {"axes": [x, y], "reference": list(ref), "hypervolume": point, "interval_95": interval,
                      "share_of_resamples_larger": larger, "resamples": resamples}
    return out


def plot_front(cells: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(SPACES), figsize=(5.2 * len(SPACES), 4.4), dpi=110)
    for ax, (space, (x, y)) in zip(axes, SPACES.items()):
        for method in dict.fromkeys(c["method"] for c in cells):
            pts = sorted((c for c in cells if c["method"] == method), key=lambda c: c["lambda"] or 0)
            xs, ys = [c[x][0] for c in pts], [c[y][0] for c in pts]
            if method == "greedy":
                ax.plot(xs, ys, "k*", markersize=12, label="greedy")
                continue
            ax.plot(xs, ys, marker="o", label=NAMES[method])
            for c, px, py in zip(pts, xs, ys):
                ax.annotate(f"{c['lambda']:.2g}", (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(LABELS[x])
        ax.set_ylabel(LABELS[y])
        ax.set_title(space)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Positivity vs relevance: one point per preference lambda (weight of positivity, labelled)")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def cost_table(ev: ParetoEvaluation, cells: list[dict], calibration: dict) -> dict:
    """Per method: training minutes (from the adapters' metadata; the reward heads' own training is
    `args-fast train-rm`'s, recorded in their reward_model.json), median decode ms per token over its
    cells, and the bytes of weights it holds while decoding."""
    train = {}
    for method, names in ADAPTERS.items():
        if all(n in ev.adapter_meta for n in names):
            train[method] = sum(ev.adapter_meta[n].get("seconds_this_run", float("nan")) for n in names) / 60
    if ev.args.reward_model is None:   # the embedded heads: their train-rm runs (sampling included)
        from ..default_models import REWARD_WEIGHTS, objective_dir
        runs = [json.loads((d / "reward_model.json").read_text()) for d in (REWARD_WEIGHTS.parent,
                                                                              objective_dir("relevance"))]
        train["args"] = sum(r.get("seconds_model_and_features", float("nan")) for r in runs) / 60
    policy_bytes = weight_bytes(ev.policy)
    memory = {"greedy": policy_bytes, "args": weight_bytes(ev.policy, *ev.rewards), "rs": policy_bytes,
              "mod": 2 * policy_bytes, "ric": policy_bytes}
    out = {}
    for method in dict.fromkeys(c["method"] for c in cells):
        times = sorted(c["ms_per_token"] for c in cells if c["method"] == method)
        out[method] = {"training_minutes": train.get(method), "decode_ms_per_token": times[len(times) // 2],
                       "decode_minutes_all_cells": sum(c["seconds"] for c in cells if c["method"] == method) / 60,
                       "weights_mb": memory[method] / 2**20}
    if "args" in out:
        out["args"]["calibration_seconds"] = calibration["seconds"]
    return out


def _fmt(pair, digits=3):
    mean, se = pair
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if se == se else f"{mean:.{digits}f}"


def report(ev: ParetoEvaluation, cells: list[dict], per_prompt: dict, calibration: dict, command: str) -> str:
    header = ev.header()
    hv = hypervolumes(cells, per_prompt)
    costs = cost_table(ev, cells, calibration)
    plot_front(cells, ev.out_dir / "front.png")
    data = {**header, "setup": ev.setup_key(), "calibration": calibration, "cells": cells, "hypervolume": hv,
            "costs": costs}
    tmp = ev.out_dir / "pareto.json.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(ev.out_dir / "pareto.json")
    m = header["machine"]
    stats = calibration["stats"]
    lines = ["# Positivity vs relevance: ARGS and the training-time methods on one front", "",
             f"- command: `{command}`",
             f"- policy: {header['models']['policy']}; positivity reward: {header['models']['reward_model']}; "
             f"relevance reward: {header['models'].get('relevance_reward_model', 'default (the embedded relevance head)')}",
             f"- prompts: {header['prompts']['count']} from `{header['prompts']['file']}` (offset "
             f"{header['prompts']['offset']}); greedy decoding, at most {header['max_new_tokens']} new tokens; "
             f"batch {header['batch_size']}",
             f"- lambda (weight of positivity): {', '.join(f'{x:g}' for x in ev.lambdas)}; ARGS k = {ev.args.k}, "
             f"w = {ev.args.w:g} * (lambda, 1 - lambda) on rewards normalised by their mean and std over greedy "
             f"replies to {ev.args.calibration_prompts} calibration contexts (positivity {stats[0]['mean']:.3f} / "
             f"{stats[0]['std']:.3f}, relevance {stats[1]['mean']:.3f} / {stats[1]['std']:.3f})",
             f"- machine: {m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads); torch {m['torch']}, "
             f"transformers {m['transformers']}", "",
             "Means over prompts ± standard error. Held out: no training or selection used MiniLM positivity or "
             "TF-IDF relevance.", "",
             "| Cell | MiniLM positivity (held out) | TF-IDF relevance (held out) | VADER (labeller) | "
             "MiniLM relevance (labeller) | positivity reward | relevance reward | harmlessness | tokens | ms/token |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['cell']} | " + " | ".join(_fmt(c[k]) for k in MEASURES[:7]) +
                     f" | {c['num_tokens'][0]:.1f} | {c['ms_per_token']:.1f} |")
    lines += ["", "## Hypervolume", "",
              "Area each method's points dominate above the reference point = the worst mean of each axis over "
              "every cell of every method (greedy included); higher is better.", "",
              "| Space (x, y) | reference | " + " | ".join(NAMES[mm] for mm in hv[next(iter(hv))]["hypervolume"]) + " |",
              "|---|---|" + "---|" * len(hv[next(iter(hv))]["hypervolume"])]
    for space, h in hv.items():
        lines.append(f"| {space} ({', '.join(h['axes'])}) | ({h['reference'][0]:.4f}, {h['reference'][1]:.4f}) | "
                     + " | ".join(f"{v:.5f} [{lo:.5f}, {hi:.5f}]" for v, (lo, hi) in
                                  zip(h["hypervolume"].values(), h["interval_95"].values())) + " |")
    if "args" in hv[next(iter(hv))]["hypervolume"]:
        others = [m for m in hv[next(iter(hv))]["hypervolume"] if m != "args"]
        lines += ["", "[lo, hi]: 95% paired-bootstrap interval over prompts (reference fixed). Share of resamples "
                  "in which ARGS' hypervolume is the larger:", "",
                  "| Space | " + " | ".join(f"ARGS > {NAMES[m]}" for m in others) + " |",
                  "|---|" + "---|" * len(others)]
        for space, h in hv.items():
            lines.append(f"| {space} | " + " | ".join(f"{h['share_of_resamples_larger'][f'args > {m}']:.3f}"
                                                       for m in others) + " |")
    lines += ["", "## Cost", "", "| Method | training (min) | decode ms/token (median over its cells) | "
              "decoding, all its cells (min) | weights (MB) |", "|---|---|---|---|---|"]
    for method, c in costs.items():
        t = c["training_minutes"]
        lines.append(f"| {NAMES[method]} | {'-' if t is None else f'{t:.1f}'} | {c['decode_ms_per_token']:.1f} | "
                     f"{c['decode_minutes_all_cells']:.1f} | {c['weights_mb']:.0f} |")
    lines += ["", "Training minutes: ARGS, the two reward heads' `args-fast train-rm` runs (their reward_model.json; "
              "each includes sampling the policy's replies for its train, val and test contexts); the others, the "
              "LoRA adapters' own runs (their .json), which reuse train-rm's train samples instead of sampling "
              "again. ARGS also calibrates the two rewards once "
              f"({calibration['seconds']:.0f} s). ms/token: the batch's wall time over the tokens generated "
              "(batched, so per token of the batch, not of one sequence).", "",
              "![front](front.png)"]
    text = "\n".join(lines) + "\n"
    (ev.out_dir / "pareto.md").write_text(text)
    return text


@releases_locks
def run_pareto(args) -> int:
    command = command_line("pareto")
    ev = ParetoEvaluation(args, command)
    args.interrupt_note = ev.saved_note
    cell_dir = ev.out_dir / "cells"
    key_path = cell_dir / "setup.json"
    if key_path.is_file() and read_json(key_path) != ev.setup_key():
        raise UserError(f"--out-dir {args.out_dir} holds cells of another setup ({key_path}); give a new --out-dir "
                         "or remove that one (its finished cells would not match these settings)")
    parallel.barrier()   # every rank has compared the old setup before rank 0 writes the new one
    if ev.world.is_main:
        cell_dir.mkdir(exist_ok=True)
        key_path.write_text(json.dumps(ev.setup_key(), indent=1) + "\n")
    calibration = ev.calibrate(ev.out_dir / "calibration.json") if "args" in ev.methods else {"seconds": 0, "stats": [
        {"mean": float("nan"), "std": float("nan")}] * 2}
    summaries, per_prompt = [], {}
    for name, method in cells_of(ev):
        path = cell_dir / f"{name}.jsonl"
        if path.is_file():   # finished before: never recomputed
            try:
                records = read_jsonl(path) if ev.world.is_main else None
            except ValueError as err:
                raise UserError(f"{err}; remove it to recompute that cell") from None
            if records is not None and [r.get("id") for r in records] != [p["id"] for p in ev.prompts]:
                raise UserError(f"{path}: its prompts differ from this run's; remove it to recompute")
        else:
            started = time.perf_counter()
            records = ev.run_method(method, label=name)
            if records is not None:
                write_jsonl(path, records)
                info(f"{name}: {time.perf_counter() - started:.0f}s")
        if records is not None:
            summaries.append(summarize_cell(name, name.split("-lambda")[0], records))
            per_prompt[name] = {m: [r[m] for r in records] for m in MEASURES}
    if ev.world.is_main:
        print(report(ev, summaries, per_prompt, calibration, command))
    ev.finish()
    return 0
