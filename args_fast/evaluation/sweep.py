"""``args-fast sweep``: ARGS-greedy over a grid of w x k (the paper's Figure 2), plots and numbers.

At w = 0 ARGS-greedy picks the top logit whatever k is, i.e. it is greedy decoding: the grid's w = 0
column is one shared greedy run (transformers' greedy), not one run per k. Each cell's records are
written to ``cells/`` as it finishes; ``--resume`` reuses the cells of an identical earlier setup. An
interrupted run resumes its unfinished cell where it stopped (``.partial/``) with or without ``--resume``.
"""
from __future__ import annotations

import json

from ..integrations import parallel
from .methods import Method
from .run import Evaluation, _fmt, summarize
import sys

from ..integrations.run_files import command_line, read_json, read_jsonl, releases_locks, write_jsonl

PLOTTED = ("reward", "diversity", "coherence", "vader", "minilm_positivity")


def plot(cells: list[dict], ks, out_dir) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for metric in PLOTTED:
        fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
        for k in ks:
            line = sorted((c["w"], c[metric]) for c in cells if c["k"] == k)
            ax.plot([w for w, _ in line], [v for _, v in line], marker="o", label=f"k={k}")
        ax.set_xlabel("w (reward weight)")
        ax.set_ylabel({"reward": "average reward", "vader": "VADER compound (RM's label)",
                       "minilm_positivity": "MiniLM positivity (held-out)"}.get(metric, metric))
        ax.set_title(f"ARGS-greedy: {metric} vs w")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"sweep_{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(str(path))
    return paths


def _w_name(w: float) -> str:
    """w in a cell's name: short (``1``, ``0.5``) where that reads back as w, else exact, so two weights
    of the grid never share a cell (and its saved work)."""
    return f"{w:g}" if float(f"{w:g}") == w else repr(w)


@releases_locks
def run_sweep(args) -> int:
    ev = Evaluation(args, command_line("sweep"))
    args.interrupt_note = ev.saved_note   # what Ctrl-C reports as saved
    ev.check_k(args.ks)
    ev.check_requests(args_methods=True)
    cell_dir = ev.out_dir / "cells"
    key_path = cell_dir / "setup.json"
    # a damaged setup file matches no setup: nothing is reused
    reuse = args.resume and key_path.exists() and read_json(key_path) == ev.setup_key()
    parallel.barrier()   # every rank has read the old setup before rank 0 writes the new one
    if ev.world.is_main:
        cell_dir.mkdir(exist_ok=True)
        key_path.write_text(json.dumps(ev.setup_key(), indent=2) + "\n")

    def records_of(method: Method, name: str) -> list[dict] | None:
        """The cell's records (rank 0; None elsewhere): a finished cell of an identical earlier run with
        --resume, else run (resuming its unfinished batches, if any) and written as it finishes."""
        path = cell_dir / f"{name}.jsonl"
        if reuse and path.exists():
            try:
                records = read_jsonl(path)
            except ValueError as err:   # a damaged cell is computed again, not reused
                records = None
                if ev.world.is_main:
                    print(f"note: not reusing {name}: {err}", file=sys.stderr)
            if (records and [r.get("id") for r in records] == [p["id"] for p in ev.prompts]
                    and all(r.get("options") == method.options for r in records)):
                return records if ev.world.is_main else None
        records = ev.run_method(method, label=name)
        if records is not None:
            write_jsonl(path, records)
        return records

    greedy = records_of(Method("greedy"), "greedy")
    cells = []
    for k in args.ks:
        for w in args.ws:
            if w == 0:
                records, source = greedy, "greedy"
            else:
                name = f"args-greedy_k{k}_w{_w_name(w)}"
                records, source = records_of(Method("args-greedy", {"k": k, "w": w}), name), name
            if records is None:   # another rank than 0: rank 0 writes everything
                continue
            cells.append({"k": k, "w": w, "run": source, **summarize(records, greedy)})
    if not ev.world.is_main:
        ev.finish()
        return 0
    header = ev.header()
    plots = plot(cells, args.ks, ev.out_dir)
    report = {**header, "ws": args.ws, "ks": args.ks, "cells": cells, "plots": plots}
    (ev.out_dir / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    m = header["machine"]
    lines = [
        "# ARGS-greedy sweep over w and k (held-out chitchat prompts)", "",
        f"- command: `{header['command']}`",
        f"- policy: {header['models']['policy']}; reward model: {header['models']['reward_model']}",
        f"- prompts: {header['prompts']['count']} from `{header['prompts']['file']}` (offset "
        f"{header['prompts']['offset']}); max new tokens {header['max_new_tokens']}; batch size "
        f"{header['batch_size']}; seed {header['seed']}",
        f"- machine: {m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads); python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}",
        "- w = 0 is the shared greedy run (ARGS-greedy at w = 0 is greedy for every k); means over prompts", "",
        "| k | w | Avg reward | Win rate vs greedy | Diversity | Coherence | VADER | MiniLM positivity | Harmlessness | "
        "Tokens | s/prompt |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['k']} | {c['w']:g} | {_fmt(c['reward'])} ± {_fmt(c['reward_std'])} | "
                     f"{_fmt(c['win_rate_vs_greedy'])} | {_fmt(c['diversity'])} | {_fmt(c['coherence'])} | "
                     f"{_fmt(c['vader'])} | {_fmt(c['minilm_positivity'])} | {_fmt(c['harmlessness'])} | {_fmt(c['num_tokens'], 1)} | "
                     f"{_fmt(c['elapsed'], 2)} |")
    lines += ["", "Best w by average reward, per k: " + "; ".join(
        f"k={k}: w={max((c for c in cells if c['k'] == k), key=lambda c: c['reward'])['w']:g}" for k in args.ks), ""]
    lines += [f"![{p.split('/')[-1]}]({p.split('/')[-1]})" for p in plots]
    table = "\n".join(lines) + "\n"
    (ev.out_dir / "sweep.md").write_text(table)
    print(table)
    ev.finish()
    return 0
