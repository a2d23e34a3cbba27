"""One LoRA policy per objective (Rewarded Soups' ingredients), by best-of-n SFT on the policy's own samples.

    .venv/bin/python results/objectives/train_soups.py [--objectives positivity,relevance]

Protocol, fixed before the first run: the 800 train contexts and 4 policy replies each that
`args-fast train-rm` sampled (its feature cache; nothing is resampled), labelled by each objective's
labeller (positivity: VADER; relevance: MiniLM cosine); per context the best-rated reply is the SFT
target (chat-templated context as the prompt, the reply tokens up to and including <|im_end|> when it
ended). LoRA r 8, alpha 16 on q_proj and v_proj of every layer, AdamW lr 5e-4, batch 8, one epoch
(100 steps), eval mode (no dropout), seed 0. Checkpoints every 10 steps in
`~/.cache/args_fast/soups/<objective>/` (a rerun resumes); the adapter is written to
`results/objectives/adapters/<objective>/` (a peft LoRA adapter folder) with its metadata.
"""
from __future__ import annotations

import argparse
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

OUT = Path(__file__).resolve().parent / "adapters"
TRAIN_DATA = rt.DataConfig(800, 4, 64, 1.0, 10, 0, 64)   # train-rm's default train split: its feature cache
SETTINGS = {"r": 8, "alpha": 16.0, "targets": ["q_proj", "v_proj"], "lr": 5e-4, "batch_size": 8, "epochs": 1,
            "seed": 0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objectives", default="positivity,relevance")
    args = parser.parse_args()
    model, tok = load_default_policy()
    for objective in args.objectives.split(","):
        start = time.perf_counter()
        data = rt.split_data(model, tok, "train", TRAIN_DATA, None, objective)
        best = data["judge"].argmax(1)
        examples = []
        for i, context in enumerate(data["contexts"]):
            prompt = encode_prompts(tok, [context], chat_template=True)[0][0].tolist()
            j = int(best[i])
            examples.append((prompt, data["tokens"][i, j, :int(data["lengths"][i, j])].tolist()))
        add_lora(model, r=SETTINGS["r"], alpha=SETTINGS["alpha"], targets=SETTINGS["targets"], seed=SETTINGS["seed"])
        losses = train_sft(model, examples, pad_id=tok.pad_token_id, lr=SETTINGS["lr"],
                           batch_size=SETTINGS["batch_size"], epochs=SETTINGS["epochs"], seed=SETTINGS["seed"],
                           work_dir=cache_root() / "soups" / objective, save_every=10)
        meta = {"objective": objective, "settings": SETTINGS, "examples": len(examples),
                "mean_target_label": float(data["judge"].max(1).values.mean()),
                "mean_label_of_all_samples": float(data["judge"].mean()),
                "losses_this_run": losses, "seconds_this_run": round(time.perf_counter() - start, 1),
                "command": "python results/objectives/train_soups.py", "torch": torch.__version__}
        save_adapter(OUT / objective, remove_lora(model), meta)
        print(f"{objective}: {len(losses)} steps, last loss {losses[-1] if losses else float('nan'):.4f}, "
              f"{meta['seconds_this_run']:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
