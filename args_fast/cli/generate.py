"""``args-fast generate``: ARGS continuations (and greedy ones beside them), with rewards and times."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time

import torch

from ..decoding.decoder import ARGSDecoder
from ..decoding.inputs import ROLES, check_request, cut_at_eos, encode_prompts
from ..integrations.console import hide_progress
from ..integrations.run_files import (info, lock_run, make_record, output_file, progress_disabled, read_user_text,
                                      releases_locks, text_lines, user_json_lines, write_jsonl)
from ..loading import (check_model_dir, check_placement, check_reward_flags, compile_of, dtype_of, load_reward,
                       load_user_models, placement, run_model_fingerprints)
from ..rewards import kinds
from ..validation import UserError

DEFAULT_BATCH_SIZE = 8



# --------------------------------------------------------------------------------------- inputs
def read_messages(flag: str, path: str) -> list[list[dict]]:
    """The conversations of a JSONL file of ``{"messages": [{"role": ..., "content": ...}, ...]}`` lines
    (blank lines skipped): each a list of messages with a role in :data:`ROLES` and string content, a
    system message only first, ending with a user message. A line that breaks this is a UserError naming
    the flag, the file and the line."""
    conversations = []
    for where, record in user_json_lines(flag, path):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            raise UserError(f'{where} must be a JSON object with a non-empty list "messages", e.g. '
                            '{"messages": [{"role": "user", "content": "Hi"}]}')
        for m, message in enumerate(messages, 1):
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise UserError(f'{where}, message {m}: must be an object with exactly "role" and "content", got '
                                f"{json.dumps(message, ensure_ascii=False)[:80]}")
            if message["role"] not in ROLES:
                raise UserError(f"{where}, message {m}: role must be one of {', '.join(ROLES)}, got "
                                f"{message['role']!r}")
            if not isinstance(message["content"], str):
                raise UserError(f'{where}, message {m}: "content" must be a string')
            if message["role"] == "system" and m != 1:
                raise UserError(f"{where}, message {m}: a system message may only come first")
        if messages[-1]["role"] != "user":
            raise UserError(f"{where}: the last message must be the user's (the model answers it), got "
                            f"{messages[-1]['role']!r}")
        conversations.append(messages)
    if not conversations:
        raise UserError(f"{flag} {path}: no conversations in it (empty or only blank lines)")
    return conversations


def _read_prompts(args) -> list[str | list[dict]]:
    """The inputs, in order: --prompt texts, --prompts-file lines, then --messages-file conversations."""
    if getattr(args, "prompts_file", None) == "-" and getattr(args, "messages_file", None) == "-":
        raise UserError("--prompts-file - and --messages-file -: only one of them can read standard input")
    prompts: list = list(args.prompt or [])
    if args.prompts_file is not None:
        from_file = [line for line in text_lines(read_user_text("--prompts-file", args.prompts_file)) if line.strip()]
        if not from_file:
            raise UserError(f"--prompts-file {args.prompts_file}: no prompts in it (empty or only blank lines)")
        prompts += from_file
    if getattr(args, "messages_file", None) is not None:
        conversations = read_messages("--messages-file", args.messages_file)
        if args.system_prompt is not None:
            starts = [n for n, c in enumerate(conversations, 1) if c[0]["role"] == "system"]
            if starts:
                raise UserError(f"--system-prompt: conversation {starts[0]} of --messages-file {args.messages_file} "
                                "has its own system message; give one or the other")
        prompts += conversations
    if not prompts:
        raise UserError("give --prompt TEXT (repeatable), --prompts-file FILE or --messages-file FILE.jsonl")
    return prompts


def _shown(prompt) -> str:
    """What the printout shows of an input: the prompt, or a conversation's last (user) message."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def _final_rewards(rewards: torch.Tensor) -> list[float | None]:
    """Reward of each row's whole response: its last step's reward (steps after EOS are nan); None for a
    row with no step (--max-new-tokens 0)."""
    out = []
    for row in rewards:
        real = row[~row.isnan()]
        out.append(float(real[-1]) if len(real) else None)
    return out


def _fmt_reward(value) -> str:
    return f"{value:+.3f}" if value is not None and math.isfinite(value) else "n/a"


def _generate_check(args, loaded, chat: bool, model_files: dict | None = None) -> dict:
    """What --output's records depend on: unfinished work of a run with other settings, or of other
    models (``model_files``: the content fingerprints of the models' files), is not reused."""
    keys = ("k", "w", "mode", "temperature", "max_new_tokens", "seed", "backend", "batch_size", "implicit_reference",
            "token_reward", "beta", "reward_scale", "baseline", "system_prompt", "dtype")
    # "records": the record schema (make_record) the stored batches were written with; "model_files": what
    # the models' files hold, so a model replaced at the same path is not taken for the one that made them
    return {"records": 2, "models": loaded.names, "model_files": model_files, "chat_template": chat,
            **{key: getattr(args, key) for key in keys}}


def _generate_records_problem(batches, methods):
    """``validate`` of the saved batches: one record per (prompt, method) of the batch, in order, each
    with its result."""
    def problem(j: int, records: list[dict]) -> str | None:
        want = [(i, m) for i in batches[j] for m in methods]
        got = [(r.get("index"), r.get("method")) for r in records]
        if got != want:
            return f"records of (prompt, method) {got}, not {want}"
        if not all("result" in r for r in records):
            return "a record without its result"
        return None
    return problem


# --------------------------------------------------------------------------------------- streaming
class _Stream:
    """``on_step`` of a one-row decode: prints the row's new text as each token comes (up to its EOS).
    The text so far is decoded whole at every step, so tokens that only make sense together (a UTF-8
    character split over tokens, a word's leading space) print right once complete."""

    def __init__(self, tokenizer, eos_ids):
        self.tokenizer, self.eos = tokenizer, set(eos_ids or ())
        self.ids, self.shown, self.done = [], "", False

    def __call__(self, tokens: torch.Tensor) -> None:
        if self.done:
            return
        token = int(tokens[0])
        if token in self.eos:
            self.done = True
            return
        self.ids.append(token)
        self._show(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _show(self, text: str) -> None:
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return   # half a character, or a retokenised tail: wait for the next token (finish() prints it)
        sys.stdout.write(text[len(self.shown):])
        sys.stdout.flush()
        self.shown = text

    def finish(self, text: str) -> None:
        """After the decode: the rest of the final text (what was held back)."""
        if text.startswith(self.shown):
            sys.stdout.write(text[len(self.shown):])
        else:   # the decoder's cleanup changed text already shown: print the final text whole
            sys.stdout.write("\n" + text)
        sys.stdout.write("\n")
        sys.stdout.flush()


# --------------------------------------------------------------------------------------- the command
@releases_locks
def run_generate(args) -> int:
    from tqdm import tqdm

    from ..integrations import parallel
    prompts = _read_prompts(args)
    if args.system_prompt is not None and args.chat_template == "off":
        raise UserError("--system-prompt needs the chat template: drop --chat-template off")
    if any(not isinstance(p, str) for p in prompts) and args.chat_template == "off":
        raise UserError("--messages-file needs the chat template: drop --chat-template off")
    world = parallel.world()
    if args.stream:
        if args.batch_size not in (None, 1):
            raise UserError(f"--stream prints one prompt at a time: give --batch-size 1 or leave it out, "
                            f"not {args.batch_size}")
        if world.distributed:
            raise UserError("--stream prints as one process decodes: run it without torchrun")
    batch_size = args.batch_size or (1 if args.stream else DEFAULT_BATCH_SIZE)
    args.batch_size = batch_size   # what the resume check and the summary record
    check_model_dir("--policy", args.policy)
    check_model_dir("--reward-model", args.reward_model)
    check_reward_flags(args)
    output = output_file("--output", args.output) if args.output else None
    if output is not None:   # one run per output file; its saved work tied to the models' file contents
        lock_run("--output", output, output.with_name(output.name + ".lock"))
    model_files = run_model_fingerprints(args) if output is not None else None
    where = placement(args)
    check_placement(args.policy, args.reward_model, **where)
    info("loading models ...")
    loaded = load_user_models(args.policy, args.reward_model, dtype=dtype_of(args), **where)
    policy, tokenizer, reward_tokenizer = loaded.policy, loaded.tokenizer, loaded.reward_tokenizer
    reward = load_reward(args, loaded)
    vocab = policy.get_output_embeddings().out_features
    if args.k > vocab:
        raise UserError(f"--k must be an int in [1, {vocab}] (the policy's vocabulary), got {args.k}")
    has_template = tokenizer.chat_template is not None
    chat = args.chat_template == "on" or (args.chat_template == "auto" and has_template)
    needs = ("--messages-file" if any(not isinstance(p, str) for p in prompts) else
             "--system-prompt" if args.system_prompt is not None else None)
    if needs and not has_template:
        raise UserError(f"{needs} needs a chat template, and the policy's tokenizer has none")
    common = dict(max_new_tokens=args.max_new_tokens, tokenizer=tokenizer, reward_tokenizer=reward_tokenizer)
    args_method = f"args-{args.mode}"
    args_options = {"k": args.k, "w": args.w}
    if args.mode == "stochastic":
        args_options["temperature"] = args.temperature
    compiled = dict(compile=compile_of(args))
    runs = ([("greedy", "greedy", {}, dict(k=1, w=0.0, mode="greedy", backend=args.backend, **compiled))]
            if args.baseline == "greedy" else [])
    runs.append((f"ARGS-{args.mode} (k={args.k}, w={args.w})", args_method, args_options,
                 dict(k=args.k, w=args.w, mode=args.mode, temperature=args.temperature, backend=args.backend,
                      **compiled)))
    # every decoder first: each checks its options at construction, so a bad one fails before any
    # decoding; what they refuse comes from the flags (--backend that cannot run these models, ...)
    decoders = []
    for shown, method, options, decoder_options in runs:
        try:
            decoders.append((shown, method, options, ARGSDecoder(policy, reward, **decoder_options, **common)))
        except ValueError as err:
            raise UserError(str(err)) from err
    described = []
    for *_, decoder in decoders:   # what runs, in words: once per distinct engine
        if decoder.backend_description not in described:
            described.append(decoder.backend_description)
            info(f"backend: {decoder.backend_description}")
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    encoded = [encode_prompts(tokenizer, [prompts[i] for i in rows], chat_template=chat,
                              system_prompt=args.system_prompt) for rows in batches]
    # a prompt too long for a model's context is the user's: said before anything decodes
    for ids, mask in encoded:
        for *_, decoder in decoders:
            try:
                check_request(ids, mask, args.max_new_tokens, None, vocab=vocab, backend=decoder.backend,
                              models=kinds.token_models(policy, decoder._spec, decoder.reward_model))
            except ValueError as err:
                raise UserError(f"--max-new-tokens {args.max_new_tokens}: {err}") from err
    streamed = set()

    def one_batch(j: int) -> list[dict]:
        """Every decoder on batch j: one record per prompt and method, in that order; a prompt's draws
        come from its own generator (its index, the seed)."""
        rows = batches[j]
        input_ids, attention_mask = encoded[j]
        records = {i: [] for i in rows}
        for shown, method, options, decoder in decoders:
            stream = _Stream(tokenizer, decoder.eos_token_id) if args.stream else None
            if stream is not None:
                if decoder is decoders[0][3]:
                    print(f"\n=== prompt {rows[0] + 1}: {_shown(prompts[rows[0]])}")
                print(f"--- {shown}:", flush=True)
            with tqdm(total=args.max_new_tokens, desc=f"{shown} [{decoder.backend}]", unit="tok", file=sys.stderr,
                      leave=False, disable=not world.is_main or progress_disabled()) as bar:
                start = time.perf_counter()
                out = decoder.generate(input_ids, attention_mask, generator=parallel.prompt_generators(args.seed, rows),
                                       progress=bar.update, on_step=stream)
                elapsed = time.perf_counter() - start
            generated, stops = cut_at_eos(out.sequences[:, input_ids.shape[1]:], decoder.eos_token_id)
            for n, (i, ids, stop, value) in enumerate(zip(rows, generated, stops, _final_rewards(out.rewards))):
                prompt_text = tokenizer.decode(input_ids[n][attention_mask[n].bool()].tolist())
                source = ({"user_message": prompts[i]} if isinstance(prompts[i], str) else {"messages": prompts[i]})
                # the batch's time is shared by its rows, so that sums over records are totals
                records[i].append(make_record(
                    id=i, index=i, method=method, options=options, prompt=prompt_text,
                    result=tokenizer.decode(ids, skip_special_tokens=True), elapsed=elapsed / len(rows),
                    reward=value, num_tokens=len(ids), stopped=bool(stop), **source,
                    **({"system_prompt": args.system_prompt} if args.system_prompt is not None else {})))
            if stream is not None:
                stream.finish(records[rows[0]][-1]["result"])
                print(f"    reward {_fmt_reward(records[rows[0]][-1]['reward'])}", flush=True)
        streamed.update(rows if args.stream else ())
        return [r for i in rows for r in records[i]]

    run = parallel.BatchedRun([[prompts[i] for i in rows] for rows in batches], [len(rows) for rows in batches],
                              [sum(len(json.dumps(prompts[i])) for i in rows) for rows in batches],
                              work_dir=None if output is None else output.with_name(output.name + ".partial"),
                              check=_generate_check(args, loaded, chat, model_files), desc="generate", w=world,
                              validate=_generate_records_problem(batches, [method for _, method, _, _ in decoders]),
                              per_prompt=len(decoders))
    args.interrupt_note = lambda: (f"{run.finished_prompts} of {run.total_prompts} prompts saved in {run.work_dir}; "
                                   "run the same command again to finish" if output is not None
                                   else "nothing saved (give --output FILE.jsonl to keep finished prompts)")
    if run.finished_prompts:
        info(f"resuming: {run.finished_prompts} of {run.total_prompts} prompts already done ({run.work_dir})")
    bars = hide_progress(True) if args.stream else None   # a bar would cut into the streamed text
    try:
        records = run.run(one_batch)
    finally:
        if bars is not None:
            hide_progress(bars)
    if records is None:    # another rank than 0: rank 0 prints and writes everything
        return 0
    if output is not None:
        write_jsonl(output, records)
        shutil.rmtree(run.work_dir, ignore_errors=True)
    names = {method: shown for shown, method, *_ in decoders}
    by_prompt: dict[int, list[dict]] = {}
    for record in records:
        by_prompt.setdefault(record["index"], []).append(record)
    for i, group in by_prompt.items():
        if i in streamed:   # printed as it was generated
            continue
        print(f"\n=== prompt {i + 1}: {_shown(prompts[i])}")
        for r in group:
            if args.max_new_tokens == 0:
                print(f"--- {names[r['method']]}: reward n/a (no tokens generated: --max-new-tokens 0)")
            else:
                print(f"--- {names[r['method']]}: reward {_fmt_reward(r['reward'])}")
            print(r["result"].strip())
    print()
    shape = f"batch {len(batches[0])}" + (f", {len(batches)} batches" if len(batches) > 1 else "")
    if world.distributed:
        shape += f", {world.size} processes: summed compute time"
    for method, shown in names.items():
        values = [r for r in records if r["method"] == method]
        scored = [v["reward"] for v in values if v["reward"] is not None]
        mean = sum(scored) / len(scored) if scored else None
        elapsed, steps = sum(v["elapsed"] for v in values), sum(v["steps"] for v in values)
        # steps: tokens decoded over all rows (EOS included): the time per token of the whole run
        per_step = f"{1000 * elapsed / steps:.1f} ms/token" if steps else "no steps"
        print(f"{shown:<40} mean final reward {_fmt_reward(mean)}   {elapsed:6.2f} s  ({per_step}, {shape})")
    for shown, _, _, decoder in decoders:   # the compile's cost, paid in the first call of each graph
        for (rows, slots, mode), seconds in decoder.compile_seconds.items():
            info(f"{shown}: compiled the decoding step ({mode}, batch {rows}, {slots} cache slots) in its first call: "
                 f"{seconds:.1f} s, included in the time above")
    if output is not None:
        info(f"wrote {len(records)} records ({len(names)} per prompt) to {output}")
    return 0
