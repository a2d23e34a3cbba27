"""``args-fast generate``: greedy and ARGS continuations side by side, with rewards and times."""
from __future__ import annotations

import math
import shutil
import sys
import time

import torch

from ..decoding.decoder import ARGSDecoder
from ..decoding.inputs import decode_continuations, encode_prompts
from ..integrations.run_files import lock_run, output_file, read_user_text, releases_locks, text_lines
from ..loading import (check_model_dir, check_placement, check_reward_flags, load_reward, load_user_models, placement,
                       run_model_fingerprints)


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        from_file = [line for line in text_lines(read_user_text("--prompts-file", args.prompts_file)) if line.strip()]
        if not from_file:
            raise ValueError(f"--prompts-file {args.prompts_file}: no prompts in it (empty or only blank lines)")
        prompts += from_file
    if not prompts:
        raise ValueError("give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def _final_rewards(rewards: torch.Tensor) -> list[float]:
    """Reward of each row's whole response: its last step's reward (steps after EOS are nan)."""
    out = []
    for row in rewards:
        real = row[~row.isnan()]
        out.append(float(real[-1]) if len(real) else float("nan"))
    return out


def _fmt_reward(value: float) -> str:
    return f"{value:+.3f}" if math.isfinite(value) else "n/a"


def _generate_check(args, loaded, chat: bool, model_files: dict | None = None) -> dict:
    """What --output's records depend on: unfinished work of a run with other settings, or of other
    models (``model_files``: the content fingerprints of the models' files), is not reused."""
    keys = ("k", "w", "mode", "temperature", "max_new_tokens", "seed", "backend", "batch_size", "implicit_reference",
            "token_reward", "beta", "reward_scale")
    return {"models": loaded.names, "model_files": model_files, "chat_template": chat,
            **{key: getattr(args, key) for key in keys}}


def _generate_records_problem(batches):
    """``validate`` of the saved batches: one record per prompt of the batch, in order, with both results."""
    def problem(j: int, records: list[dict]) -> str | None:
        if [r.get("index") for r in records] != batches[j]:
            return f"records of prompts {[r.get('index') for r in records]}, not {batches[j]}"
        if not all(isinstance(r.get(key), dict) and "result" in r[key] for r in records for key in ("greedy", "args")):
            return "a record without its greedy or ARGS result"
        return None
    return problem


def _check_requests(decoders, encoded, max_new_tokens: int) -> None:
    """Every batch checked as each decoder checks a request (ids, context of every model that reads
    them), before either decodes any: a too-long prompt late in the file fails the run before its work."""
    from ..decoding.inputs import check_request
    from ..rewards import kinds
    for _, d in decoders:
        models = kinds.token_models(d.policy, d._spec, d.reward_model)
        for ids, mask in encoded:
            check_request(ids, mask, max_new_tokens, None, vocab=d.vocab, backend=d._backend, models=models)


@releases_locks
def run_generate(args) -> int:
    from tqdm import tqdm

    from ..integrations import parallel
    prompts = _read_prompts(args)
    check_model_dir("--policy", args.policy)
    check_model_dir("--reward-model", args.reward_model)
    check_reward_flags(args)
    output = output_file("--output", args.output) if args.output else None
    world = parallel.world()
    if output is not None:   # one run per output file; its saved work tied to the models' file contents
        lock_run("--output", output, output.with_name(output.name + ".lock"))
    model_files = run_model_fingerprints(args) if output is not None else None
    where = placement(args)
    check_placement(args.policy, args.reward_model, **where)
    if world.is_main:
        print("loading models ...", file=sys.stderr)
    loaded = load_user_models(args.policy, args.reward_model, **where)
    policy, tokenizer, reward_tokenizer = loaded.policy, loaded.tokenizer, loaded.reward_tokenizer
    reward = load_reward(args, loaded)
    vocab = policy.get_output_embeddings().out_features
    if args.k > vocab:
        raise ValueError(f"--k must be an int in [1, {vocab}] (the policy's vocabulary), got {args.k}")
    chat = args.chat_template == "on" or (args.chat_template == "auto" and tokenizer.chat_template is not None)
    common = dict(max_new_tokens=args.max_new_tokens, tokenizer=tokenizer, reward_tokenizer=reward_tokenizer)
    runs = [("greedy", dict(k=1, w=0.0, mode="greedy", backend=args.backend)),
            (f"ARGS-{args.mode} (k={args.k}, w={args.w})",
             dict(k=args.k, w=args.w, mode=args.mode, temperature=args.temperature, backend=args.backend))]
    # both decoders first: each checks its options at construction, so a bad one fails before any decoding
    decoders = [(name, ARGSDecoder(policy, reward, **options, **common)) for name, options in runs]
    if world.is_main:
        print(f"backend: {decoders[-1][1].backend_description}", file=sys.stderr)   # what runs, in words
    batches = [list(range(i, min(i + args.batch_size, len(prompts)))) for i in range(0, len(prompts), args.batch_size)]
    _check_requests(decoders, [encode_prompts(tokenizer, [prompts[i] for i in rows], chat_template=chat)
                               for rows in batches], args.max_new_tokens)

    def one_batch(j: int) -> list[dict]:
        """Both decoders on batch j; a prompt's draws come from its own generator (its index, the seed)."""
        rows = batches[j]
        input_ids, attention_mask = encode_prompts(tokenizer, [prompts[i] for i in rows], chat_template=chat)
        records = [{"index": i, "prompt": prompts[i]} for i in rows]
        for key, (name, decoder) in zip(("greedy", "args"), decoders):
            with tqdm(total=args.max_new_tokens, desc=f"{name} [{decoder.backend}]", unit="tok", file=sys.stderr,
                      leave=False, disable=not world.is_main) as bar:
                start = time.perf_counter()
                out = decoder.generate(input_ids, attention_mask, generator=parallel.prompt_generators(args.seed, rows),
                                       progress=bar.update)
                elapsed = time.perf_counter() - start
            texts = decode_continuations(tokenizer, out.sequences[:, input_ids.shape[1]:], decoder.eos_token_id)
            for record, text, value in zip(records, texts, _final_rewards(out.rewards)):
                # the batch's time and steps are shared by its rows, so that sums over records are totals
                record[key] = {"method": name, "result": text, "reward": value, "seconds": elapsed / len(rows),
                               "steps": out.rewards.shape[1] / len(rows)}
        return records

    run = parallel.BatchedRun([[prompts[i] for i in rows] for rows in batches], [len(rows) for rows in batches],
                              [sum(len(prompts[i]) for i in rows) for rows in batches],
                              work_dir=None if output is None else output.with_name(output.name + ".partial"),
                              check=_generate_check(args, loaded, chat, model_files), desc="generate", w=world,
                              validate=_generate_records_problem(batches))
    args.interrupt_note = lambda: (f"{run.finished_prompts} of {run.total_prompts} prompts saved in {run.work_dir}; "
                                   "run the same command again to finish" if output is not None
                                   else "nothing saved (give --output FILE.jsonl to keep finished prompts)")
    if run.finished_prompts and world.is_main:
        print(f"resuming: {run.finished_prompts} of {run.total_prompts} prompts already done ({run.work_dir})",
              file=sys.stderr)
    records = run.run(one_batch)
    if records is None:    # another rank than 0: rank 0 prints and writes everything
        return 0
    if output is not None:
        from ..integrations.run_files import write_jsonl
        write_jsonl(output, records)
        shutil.rmtree(run.work_dir, ignore_errors=True)
    for i, record in enumerate(records):
        print(f"\n=== prompt {i + 1}: {record['prompt']}")
        for key in ("greedy", "args"):
            r = record[key]
            if args.max_new_tokens == 0:
                print(f"--- {r['method']}: reward n/a (no tokens generated: --max-new-tokens 0)")
            else:
                print(f"--- {r['method']}: reward {_fmt_reward(r['reward'])}")
            print(r["result"].strip())
    print()
    shape = f"batch {len(batches[0])}" + (f", {len(batches)} batches" if len(batches) > 1 else "")
    if world.distributed:
        shape += f", {world.size} processes: summed compute time"
    for key in ("greedy", "args"):
        values = [r[key] for r in records]
        mean = sum(v["reward"] for v in values) / len(values)
        elapsed, steps = sum(v["seconds"] for v in values), round(sum(v["steps"] for v in values))
        per_step = f"{1000 * elapsed / steps:.1f} ms/step" if steps else "no steps"
        print(f"{values[0]['method']:<40} mean final reward {_fmt_reward(mean)}   {elapsed:6.2f} s  ({per_step}, {shape})")
    if output is not None:
        print(f"wrote {len(records)} records to {output}", file=sys.stderr)
    return 0
