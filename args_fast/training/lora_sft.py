"""LoRA fine-tuning of the policy on chosen replies (best-of-n SFT), for the training-time baselines.

Rewarded Soups needs one policy per objective: here each is the policy plus a LoRA adapter trained,
by supervised fine-tuning, on the reply its objective's labeller rated best among the policy's own
samples for each training context (best-of-n: the samples and labels `args-fast train-rm` makes).

* :class:`LoRALinear`: ``base(x) + (alpha / r) * (x A^T) B^T``, ``B`` zero at the start (the model is
  unchanged until it trains); :func:`add_lora` wraps the target linear layers, :func:`remove_lora`
  restores them and returns the adapter as ``{module name: (A, B, scale)}``, the format
  :func:`args_fast.training.baselines.interpolate_lora` mixes.
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


def save_adapter(path, adapter: dict, meta: dict) -> None:
    """``path``.safetensors (each layer's ``A`` and ``B``) and ``path``.json (``meta`` plus the scale)."""
    import json
    from safetensors.torch import save_file
    path = Path(path)
    scales = {float(scale) for _, _, scale in adapter.values()}
    if len(scales) != 1:
        raise ValueError(f"an adapter's layers must share one scale, got {sorted(scales)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{name}.{part}": t.contiguous() for name, (a, b, _) in adapter.items() for part, t in (("A", a), ("B", b))},
              str(path.with_suffix(".safetensors")))
    path.with_suffix(".safetensors").chmod(0o644)     # save_file creates it owner-only
    path.with_suffix(".json").write_text(json.dumps({**meta, "scale": scales.pop()}, indent=1) + "\n")


def load_adapter(path) -> tuple[dict, dict]:
    """(adapter ``{module name: (A, B, scale)}``, its metadata) saved by :func:`save_adapter`."""
    import json
    from safetensors.torch import load_file
    path = Path(path)
    tensors_file, meta_file = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for f in (tensors_file, meta_file):
        if not f.is_file():
            raise ValueError(f"LoRA adapter {path}: {f.name} is missing")
    meta = json.loads(meta_file.read_text())
    tensors = load_file(str(tensors_file))
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    bad = [n for n in names if f"{n}.A" not in tensors or f"{n}.B" not in tensors]
    if bad or "scale" not in meta:
        raise ValueError(f"LoRA adapter {path}: needs an A and a B per layer and a scale, got {bad[:3] or 'no scale'}")
    return {n: (tensors[f"{n}.A"], tensors[f"{n}.B"], float(meta["scale"])) for n in names}, meta


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
