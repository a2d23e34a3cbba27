"""The training-time multi-objective methods ARGS is compared with, and the Pareto-front measure.

* Rewarded Soups (Ramé et al., 2023): policies fine-tuned on different rewards, their weights
  interpolated: :func:`interpolate_lora` sets ``W = W_0 + sum_i lambda_i * s_i * B_i @ A_i`` on each
  LoRA-adapted linear layer (the exact interpolation of the merged models' weights).
* Rewards-in-Context (Yang et al., 2024): one policy fine-tuned with each reply's rewards written
  into its prompt, decoded with desired rewards chosen from the preference: :func:`ric_prompt`,
  :func:`parse_ric_prompt`, :func:`ric_targets` (RiC's preference-to-reward map).
* MOD (Shi et al., 2024): the per-objective policies' next-token log-probabilities mixed by the
  preference at each step: :class:`MixedPolicyRunner`, a policy runner for the decoding loop
  (with ``w = 0`` ARGS is greedy decoding of the mixture).
* :func:`hypervolume_2d`: the area a front dominates above a reference point.
"""
from __future__ import annotations

import re

import torch
from torch import nn


# --------------------------------------------------------------------------------------- hypervolume
def hypervolume_2d(points, reference) -> float:
    """Area dominated by ``points`` (maximising both coordinates) and bounded below by ``reference``;
    points not above the reference in both coordinates add nothing."""
    rx, ry = float(reference[0]), float(reference[1])
    front = sorted(((float(x), float(y)) for x, y in points if x > rx and y > ry), key=lambda p: (-p[0], -p[1]))
    area, best_y = 0.0, ry
    for x, y in front:             # x decreasing: each point adds the strip of y above the best so far
        if y > best_y:
            area += (x - rx) * (y - best_y)
            best_y = y
    return area


# --------------------------------------------------------------------------------------- Rewards-in-Context
_RIC_TAG = "<rm{}>"


def ric_prompt(message: str, rewards) -> str:
    """``message`` followed by its reward tags, e.g. ``"... <rm1> 0.52 <rm2> -1.30"`` (two decimals)."""
    tags = " ".join(f"{_RIC_TAG.format(i + 1)} {float(r):.2f}" for i, r in enumerate(rewards))
    return f"{message} {tags}"


def parse_ric_prompt(text: str) -> tuple[str, list[float]]:
    """The inverse of :func:`ric_prompt`: (message, rewards)."""
    match = re.search(r"((?:\s<rm\d+> -?\d+\.\d{2})+)$", text)
    if match is None:
        raise ValueError(f"no RiC reward tags at the end of {text[-60:]!r}")
    values = re.findall(r"<rm(\d+)> (-?\d+\.\d{2})", match.group(1))
    if [int(i) for i, _ in values] != list(range(1, len(values) + 1)):
        raise ValueError(f"RiC reward tags out of order in {match.group(1)!r}")
    return text[:match.start()], [float(v) for _, v in values]


def ric_targets(preference, lows, highs) -> list[float]:
    """RiC's map from a preference vector (non-negative, summing to 1, n objectives) to the desired
    rewards written into the prompt: objective i gets its high value when ``lambda_i >= 1/n``, else
    ``low_i + n * lambda_i * (high_i - low_i)``."""
    n = len(preference)
    if not (len(lows) == len(highs) == n) or n == 0:
        raise ValueError(f"preference, lows and highs must have the same length, got {n}, {len(lows)}, {len(highs)}")
    if any(p < 0 for p in preference) or abs(sum(preference) - 1) > 1e-6:
        raise ValueError(f"preference must be non-negative and sum to 1, got {list(preference)}")
    return [float(hi) if p >= 1 / n else float(lo) + n * p * (float(hi) - float(lo))
            for p, lo, hi in zip(preference, lows, highs)]


# --------------------------------------------------------------------------------------- Rewarded Soups
LoraAdapter = dict   # module name -> (A (r, in), B (out, r), scale)


def interpolate_lora(model: nn.Module, base: dict, adapters: list[LoraAdapter], lambdas) -> None:
    """Set every adapted linear layer's weight to ``base[name] + sum_i lambda_i * scale_i * B_i @ A_i``,
    in place. ``base``: the layers' original weights by module name (:func:`base_weights`)."""
    if len(adapters) != len(lambdas):
        raise ValueError(f"{len(adapters)} adapters but {len(lambdas)} lambdas")
    modules = dict(model.named_modules())
    names = set().union(*(a.keys() for a in adapters)) if adapters else set()
    missing = sorted(n for n in names if n not in base or n not in modules)
    if missing:
        raise ValueError(f"adapted modules not in the model or the base weights: {missing[:5]}")
    with torch.no_grad():
        for name in names:
            weight = base[name].to(torch.float32).clone()
            for adapter, lam in zip(adapters, lambdas):
                if name in adapter:
                    a, b, scale = adapter[name]
                    weight += float(lam) * float(scale) * (b.float() @ a.float())
            modules[name].weight.copy_(weight.to(modules[name].weight.dtype))


def base_weights(model: nn.Module, names) -> dict:
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach().clone() for name in names}


# --------------------------------------------------------------------------------------- MOD
class MixedPolicyRunner:
    """A policy runner (``backends.engine.PolicyRunner``) whose next-token scores are
    ``sum_i lambda_i * log_softmax(logits_i)`` of several policy runners (one per objective)."""

    def __init__(self, runners, lambdas):
        lambdas = [float(x) for x in lambdas]
        if len(runners) != len(lambdas) or not runners:
            raise ValueError(f"{len(runners)} policies but {len(lambdas)} lambdas")
        if any(x < 0 for x in lambdas) or not any(lambdas):
            raise ValueError(f"lambdas must be >= 0 and not all 0, got {lambdas}")
        self.runners, self.lambdas = runners, lambdas

    def _mix(self, logits):
        # every runner decodes every step (its cache must follow the sequence), a zero weight adds nothing
        return sum(lam * torch.log_softmax(l.float(), -1) for lam, l in zip(self.lambdas, logits) if lam)

    def prefill(self, input_ids, attention_mask, max_new_tokens):
        return self._mix([r.prefill(input_ids, attention_mask, max_new_tokens) for r in self.runners])

    def step(self, tokens):
        return self._mix([r.step(tokens) for r in self.runners])


@torch.no_grad()
def mod_generate(policies, lambdas, input_ids, attention_mask, *, max_new_tokens: int, eos_ids=(), pad_id: int = 0):
    """MOD, greedy: each step the token maximising ``sum_i lambda_i log pi_i(. | x)``; left-padded
    batches, rows stop at an EOS id (pad after it). Returns the ``(B, P + T)`` sequences."""
    from ..engine.backends.hf_runners import HFPolicyRunner
    runner = MixedPolicyRunner([HFPolicyRunner(p) for p in policies], lambdas)
    device = policies[0].device
    ids, mask = input_ids.to(device), attention_mask.to(device)
    scores = runner.prefill(ids, mask, max_new_tokens)
    eos = torch.tensor(list(eos_ids), device=device, dtype=torch.long)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    out = [ids]
    for t in range(max_new_tokens):
        token = torch.where(finished, torch.full_like(finished, pad_id, dtype=torch.long), scores.argmax(-1))
        out.append(token[:, None])
        finished = finished | torch.isin(token, eos)
        if bool(finished.all()) or t == max_new_tokens - 1:
            break
        scores = runner.step(token)
    return torch.cat(out, 1)
