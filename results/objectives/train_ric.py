"""Rewards-in-Context's policy: one LoRA fine-tuned with each training reply's rewards written into its prompt.

    .venv/bin/python results/objectives/train_ric.py

Protocol, fixed before the first run (RiC's offline stage; its online rejection-sampling stage is
not run): the same 800 train contexts and 4 policy replies each that `args-fast train-rm` sampled
and `train_soups.py` used (its feature cache; nothing is resampled). Every reply (3,200) is one
example: its two labeller scores (positivity: VADER compound; relevance: MiniLM cosine of context
and reply), each z-normalised by its mean and std over these 3,200 replies as RiC does, are written
after the user's message by `moo_baselines.ric_prompt` (``... <rm1> 0.52 <rm2> -1.30``), the
chat-templated result is the prompt, the reply (up to and including <|im_end|> when it ended) the
target. LoRA r 8, alpha 16 on q_proj and v_proj, AdamW lr 5e-4, batch 8, one epoch (400 steps),
eval mode, seed 0: the Rewarded Soups settings. Checkpoints every 10 steps in
`~/.cache/args_fast/ric/` (a rerun resumes). Writes `results/objectives/adapters/ric/`, a peft LoRA
adapter folder whose `args_fast.json` holds the normalisation and RiC's preference-to-reward map ends
(the minimum and maximum normalised reward of each objective over the training replies).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from args_fast.training import reward_heads as rt  # noqa: E402
from args_fast.decoding.inputs import encode_prompts  # noqa: E402
from args_fast.default_models import cache_root, load_default_policy  # noqa: E402
from args_fast.training.lora_sft import add_lora, remove_lora, save_adapter, train_sft  # noqa: E402
from args_fast.training.baselines import ric_prompt  # noqa: E402
from train_soups import SETTINGS, TRAIN_DATA  # noqa: E402  (the Rewarded Soups adapters' settings and data)

OUT = Path(__file__).resolve().parent / "adapters"
OBJECTIVES = ("positivity", "relevance")


def main():
    start = time.perf_counter()
    model, tok = load_default_policy()
    labels, data = [], None
    for objective in OBJECTIVES:
        data = rt.split_data(model, tok, "train", TRAIN_DATA, None, objective)
        labels.append(data["judge"].float())
    norm = [{"mean": float(x.mean()), "std": float(x.std())} for x in labels]
    z = torch.stack([(x - n["mean"]) / n["std"] for x, n in zip(labels, norm)], -1)    # (N, S, 2)
    examples = []
    for i, context in enumerate(data["contexts"]):
        for j in range(z.shape[1]):
            prompt = encode_prompts(tok, [ric_prompt(context, z[i, j].tolist())], chat_template=True)[0][0].tolist()
            examples.append((prompt, data["tokens"][i, j, :int(data["lengths"][i, j])].tolist()))
    add_lora(model, r=SETTINGS["r"], alpha=SETTINGS["alpha"], targets=SETTINGS["targets"], seed=SETTINGS["seed"])
    losses = train_sft(model, examples, pad_id=tok.pad_token_id, lr=SETTINGS["lr"], batch_size=SETTINGS["batch_size"],
                       epochs=SETTINGS["epochs"], seed=SETTINGS["seed"], work_dir=cache_root() / "ric", save_every=10)
    meta = {"method": "rewards-in-context (offline stage)", "objectives": list(OBJECTIVES), "settings": SETTINGS,
            "examples": len(examples), "normalisation": norm,
            "lows": [float(z[..., i].min()) for i in range(len(OBJECTIVES))],
            "highs": [float(z[..., i].max()) for i in range(len(OBJECTIVES))],
            "losses_this_run": losses, "seconds_this_run": round(time.perf_counter() - start, 1),
            "command": "python results/objectives/train_ric.py", "torch": torch.__version__}
    save_adapter(OUT / "ric", remove_lora(model), meta)
    print(f"ric: {len(losses)} steps, last loss {losses[-1] if losses else float('nan'):.4f}, "
          f"{meta['seconds_this_run']:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
