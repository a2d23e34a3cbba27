"""LoRA fine-tuning of the policy on chosen replies (best-of-n SFT), for the training-time baselines.

Rewarded Soups needs one policy per objective: here each is the policy plus a LoRA adapter trained,
by supervised fine-tuning, on the reply its objective's labeller rated best among the policy's own
samples for each training context (best-of-n: the samples and labels `args-fast train-rm` makes).

* :class:`LoRALinear`: ``base(x) + (alpha / r) * (x A^T) B^T``, ``B`` zero at the start (the model is
  unchanged until it trains); :func:`add_lora` wraps the target linear layers, :func:`remove_lora`
  restores them and returns the adapter as ``{module name: (A, B, scale)}``, the format
  :func:`args_fast.training.baselines.interpolate_lora` mixes; :func:`save_adapter` /
  :func:`load_adapter` write and read it as a peft LoRA adapter folder.
* :func:`train_sft`: AdamW on the reply tokens' cross-entropy (the prompt is context only), fixed
  seed and batch order, a checkpoint (adapter, optimiser, step) every ``save_every`` steps into
  ``work_dir``: a cut run resumes from its last checkpoint to the same adapter.
"""
from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

TARGETS = ("q_proj", "v_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, seed: int):
        super().__init__()
        self.base, self.r, self.scale = base, r, alpha / r
        g = torch.Generator().manual_seed(seed)
        # A ~ kaiming-uniform as in the LoRA paper's reference code, B = 0
        bound = 1 / math.sqrt(base.in_features)
        self.A = nn.Parameter((torch.rand(r, base.in_features, generator=g) * 2 - 1) * bound)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.t().to(x.dtype)) @ self.B.t().to(x.dtype)


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, targets=TARGETS, seed: int = 0) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ends with one of ``targets``; freeze everything else."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(tuple(targets))]
    if not names:
        raise ValueError(f"no linear layer of the model ends with {targets}")
    for p in model.parameters():
        p.requires_grad_(False)
    for i, name in enumerate(names):
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, LoRALinear(getattr(holder, child), r, alpha, seed * 100_003 + i))
    return names


def lora_state(model: nn.Module) -> dict:
    return {n: (m.A.detach().clone(), m.B.detach().clone(), m.scale)
            for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def load_lora_state(model: nn.Module, state: dict) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, (a, b, _) in state.items():
            modules[name].A.copy_(a)
            modules[name].B.copy_(b)


def remove_lora(model: nn.Module) -> dict:
    """Unwrap the LoRA layers (the model is the base again) and return the adapter."""
    adapter = lora_state(model)
    for name in adapter:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, getattr(holder, child).base)
    return adapter


# On disk an adapter is a folder in peft's LoRA format, so that peft (and what loads peft adapters:
# trl, vLLM) reads ours and we read theirs: adapter_config.json (rank, alpha, the target modules) and
# adapter_model.safetensors (``base_model.model.<module>.lora_A.weight`` (r, in) and ``.lora_B.weight``
# (out, r)); the scale is peft's ``lora_alpha / r``. Our training record goes next to them.
PEFT_CONFIG, PEFT_WEIGHTS, TRAINING_RECORD = "adapter_config.json", "adapter_model.safetensors", "args_fast.json"
_PEFT_PREFIX = "base_model.model."


def save_adapter(path, adapter: dict, meta: dict) -> None:
    """The folder ``path`` in peft's LoRA format (see above), with ``meta`` in ``path/args_fast.json``."""
    import json
    from safetensors.torch import save_file
    path = Path(path)
    if not adapter:
        raise ValueError("the adapter has no layers")
    scales = {float(scale) for _, _, scale in adapter.values()}
    ranks = {int(a.shape[0]) for a, _, _ in adapter.values()}
    if len(scales) != 1 or len(ranks) != 1:
        raise ValueError(f"an adapter's layers must share one scale and one rank, got scales {sorted(scales)}, "
                         f"ranks {sorted(ranks)}")
    scale, r = scales.pop(), ranks.pop()
    alpha = scale * r
    if alpha / r != scale:    # peft recomputes the scale as alpha / r: it must come back bit for bit
        raise ValueError(f"scale {scale!r} with rank {r} is not alpha / r for a float alpha")
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
              "target_modules": sorted(adapter), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": False, "use_dora": False, "modules_to_save": None, "rank_pattern": {},
              "alpha_pattern": {}, "init_lora_weights": True, "inference_mode": True,
              "base_model_name_or_path": meta.get("base_model")}
    save_file({f"{_PEFT_PREFIX}{name}.lora_{part}.weight": t.contiguous()
               for name, (a, b, _) in adapter.items() for part, t in (("A", a), ("B", b))},
              str(path / PEFT_WEIGHTS), metadata={"format": "pt"})
    (path / PEFT_WEIGHTS).chmod(0o644)     # save_file creates it owner-only
    (path / PEFT_CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    (path / TRAINING_RECORD).write_text(json.dumps({k: v for k, v in meta.items() if k != "scale"}, indent=1) + "\n")


def load_adapter(path) -> tuple[dict, dict]:
    """(adapter ``{module name: (A, B, scale)}``, its metadata with the ``scale``) from a peft LoRA folder:
    one :func:`save_adapter` wrote, or peft's ``save_pretrained`` (plain LoRA on linear layers)."""
    import json
    from safetensors.torch import load_file
    path = Path(path)
    for name in (PEFT_CONFIG, PEFT_WEIGHTS):
        if not (path / name).is_file():
            raise ValueError(f"LoRA adapter {path}: {name} is missing (expected a peft LoRA adapter folder)")
    config = json.loads((path / PEFT_CONFIG).read_text())
    # what a plain LoRA on linear layers leaves out; anything else would change the model in a way
    # these weights alone do not describe, so it is refused rather than dropped
    unsupported = {"peft_type": config.get("peft_type") != "LORA", "bias": config.get("bias", "none") != "none",
                   "use_dora": bool(config.get("use_dora")), "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
                   "modules_to_save": bool(config.get("modules_to_save")),
                   "rank_pattern": bool(config.get("rank_pattern")), "alpha_pattern": bool(config.get("alpha_pattern"))}
    if any(unsupported.values()):
        raise ValueError(f"LoRA adapter {path}: only plain LoRA (no bias, DoRA, fan_in_fan_out, modules_to_save or "
                         f"per-module ranks) is supported, got {[k for k, bad in unsupported.items() if bad]}")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_file(str(path / PEFT_WEIGHTS))
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        module, dot, part = name.rpartition(".lora_")
        if not dot or part not in ("A.weight", "B.weight"):
            raise ValueError(f"LoRA adapter {path}: unexpected tensor {key!r} (only lora_A / lora_B weights)")
        layers.setdefault(module, {})[part[0]] = tensor
    bad = [n for n, parts in layers.items() if set(parts) != {"A", "B"} or parts["A"].shape[0] != r
           or parts["B"].shape[1] != r]
    if bad or not layers:
        raise ValueError(f"LoRA adapter {path}: needs an A (r x in) and a B (out x r) of rank {r} per layer, "
                         f"got {bad[:3] or 'no layers'}")
    record = path / TRAINING_RECORD
    meta = json.loads(record.read_text()) if record.is_file() else {}
    return {n: (layers[n]["A"], layers[n]["B"], scale) for n in sorted(layers)}, {**meta, "scale": scale}


def sft_batches(examples: list[tuple[list[int], list[int]]], batch_size: int, seed: int, epochs: int):
    """The fixed order of (prompt ids, reply ids) batches: shuffled per epoch by ``seed``."""
    order = []
    for epoch in range(epochs):
        idx = list(range(len(examples)))
        random.Random(f"{seed}-{epoch}").shuffle(idx)
        order += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return order


def _collate(examples, rows, pad_id):
    seqs = [examples[i][0] + examples[i][1] for i in rows]
    width = max(map(len, seqs))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for r, i in enumerate(rows):
        prompt, reply = examples[i]
        n = len(prompt) + len(reply)
        ids[r, :n], mask[r, :n] = torch.tensor(prompt + reply), 1          # right-padded for training
        labels[r, len(prompt):n] = torch.tensor(reply)
    return ids, mask, labels


def train_sft(model: nn.Module, examples, *, pad_id: int, lr: float = 1e-4, batch_size: int = 8, epochs: int = 1,
              seed: int = 0, work_dir: Path | None = None, save_every: int = 10, max_steps: int | None = None,
              progress: bool = True) -> list[float]:
    """Train the LoRA parameters of ``model`` (see :func:`add_lora`) on ``examples`` = [(prompt ids,
    reply ids)]; returns the loss of each step run now. With ``work_dir``, resumes from
    ``work_dir/checkpoint.pt`` and writes it every ``save_every`` steps and at the end.
    ``max_steps``: stop after that many steps in all (a cut run, for tests)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: call add_lora first")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batches = sft_batches(examples, batch_size, seed, epochs)
    step, ckpt = 0, None if work_dir is None else Path(work_dir) / "checkpoint.pt"
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt)
        load_lora_state(model, state["lora"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"resuming LoRA training at step {step}/{len(batches)} ({ckpt})", file=sys.stderr)

    def save():
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"lora": lora_state(model), "optimizer": opt.state_dict(), "step": step}, tmp)
            tmp.replace(ckpt)   # atomic: a cut never leaves half a checkpoint

    losses, start = [], time.perf_counter()
    # the model stays in eval mode: no dropout, so a step is a function of the state alone and a
    # resumed run reproduces an uninterrupted one (LoRA's own dropout is 0 here too)
    model.eval()
    while step < len(batches) and (max_steps is None or step < max_steps):
        ids, mask, labels = _collate(examples, batches[step], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                           ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % save_every == 0 or step == len(batches):
            save()
        if progress and (step % 10 == 0 or step == len(batches)):
            print(f"  LoRA SFT step {step}/{len(batches)} loss {losses[-1]:.4f} "
                  f"({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    return losses
