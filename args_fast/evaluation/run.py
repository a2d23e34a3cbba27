"""``args-fast eval``: decoding methods over the held-out prompts, one JSONL per method, and a table.

Each JSONL record is :func:`args_fast.integrations.run_files.make_record`'s (the fields of every
command's records: the official ARGS fields ``prompt`` = the text the policy saw, ``result`` = the
continuation, ``response`` = prompt + result, ``elapsed`` = seconds, ``method``, then ``id``, ``index``,
``reward``, ``steps``, ``num_tokens``, ``stopped``, ...) plus the metrics of that continuation.
``elapsed`` is the batch's wall time divided by its rows (prompts run batched).
"""
from __future__ import annotations

import json
import shutil
import time

import torch

from ..data.prompts import select
from ..decoding.inputs import encode_prompts
from ..integrations import parallel
from ..integrations.run_files import (command_line, info, lock_run, machine_info, make_out_dir, make_record,
                                      releases_locks, user_json_lines, write_jsonl)
from ..loading import (check_model_dir, check_placement, check_reward_flags, compile_of, dtype_of, load_reward, load_user_models,
                       placement, run_model_fingerprints)
from ..validation import UserError
from . import metrics
from .methods import METHODS, Method, args_decoder, available_methods, contrastive_unavailable, make_methods, run_batch


# --------------------------------------------------------------------------------------- prompts


def read_prompt_records(flag: str, path: str) -> list[dict]:
    """The prompt records (``id``, ``prompt``, ...) of the JSONL file the user named with ``flag``; lines
    without a ``prompt`` (the metadata line) are skipped. Each way the file can be unusable (missing,
    unreadable, not UTF-8, not JSON lines, no prompts) is a UserError naming the flag and the file."""
    records = []
    for where, record in user_json_lines(flag, path):
        if not isinstance(record, dict):
            raise UserError(f"{where} is not a JSON object")
        if "prompt" not in record:
            continue
        if not isinstance(record["prompt"], str) or "id" not in record:
            raise UserError(f"{where} needs a string \"prompt\" and an \"id\"")
        records.append(record)
    if not records:
        raise UserError(f"{flag} {path}: no prompt records in it (JSON lines with \"id\" and \"prompt\")")
    return records


# --------------------------------------------------------------------------------------- the evaluation


MAX_THREADS = 4096   # torch CPU threads: far above any machine's cores, far below what torch overflows at


class Evaluation:
    """Models, encoded prompts and scorers shared by every method of one run (eval or sweep)."""

    def __init__(self, args, command: str):
        if args.threads:
            # torch overflows past a C int ("Overflow when unpacking long") and would start any number below
            if not 1 <= args.threads <= MAX_THREADS:
                raise UserError(f"--threads must be an integer in [1, {MAX_THREADS}], got {args.threads}")
            torch.set_num_threads(args.threads)
        self.args, self.command = args, command
        # every user input is checked before the models load
        try:
            self.prompts = select(read_prompt_records("--prompts", args.prompts), args.offset, args.num_prompts)
        except UserError:
            raise
        except ValueError as err:   # select's: --offset / --num-prompts beyond the file
            raise UserError(str(err)) from err
        check_model_dir("--policy", args.policy)
        check_model_dir("--reward-model", args.reward_model)
        check_reward_flags(args)
        where = placement(args)
        check_placement(args.policy, args.reward_model, **where)
        self.out_dir = make_out_dir("--out-dir", args.out_dir)
        self.partial_dir = self.out_dir / ".partial"
        self.world = parallel.world()
        # one run per output folder (released when the command returns: run_eval is @releases_locks)
        lock_run("--out-dir", self.out_dir, self.out_dir / ".lock")
        self.progress: dict[str, parallel.BatchedRun] = {}
        self.described: set[str] = set()   # backend lines printed
        # saved work is tied to the models' file contents, read before they load
        self.model_files = run_model_fingerprints(args)
        loaded = load_user_models(args.policy, args.reward_model, dtype=dtype_of(args), **where)
        loaded.reward = load_reward(args, loaded)
        if loaded.reward_tokenizer is not None:
            raise UserError(f"--reward-model {args.reward_model} has another vocabulary than the policy's; the "
                             "evaluation scores token ids with it, so it needs the policy's vocabulary")
        self.policy, self.tokenizer, self.reward, self.model_names = (loaded.policy, loaded.tokenizer, loaded.reward,
                                                                      loaded.names)
        gen_eos = getattr(self.policy.generation_config, "eos_token_id", None)
        eos = gen_eos if gen_eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not self.eos_ids:
            raise UserError("the policy has no eos_token_id (generation_config or tokenizer)")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = self.tokenizer.pad_token_id
        self.embedder = metrics.SentenceEmbedder()
        # every batch is encoded once; the same batches feed every method
        self.batches = []
        for i in range(0, len(self.prompts), args.batch_size):
            chunk = self.prompts[i:i + args.batch_size]
            ids, mask = encode_prompts(self.tokenizer, [p["prompt"] for p in chunk], chat_template=True)
            self.batches.append((chunk, ids, mask, [args.offset + i + n for n in range(len(chunk))]))

    def check_k(self, ks):
        """ARGS needs k <= the policy's vocabulary: fail before any method runs, not after greedy."""
        vocab = self.policy.get_output_embeddings().out_features
        bad = [k for k in ks if not 1 <= k <= vocab]
        if bad:
            raise UserError(f"--k must be an int in [1, {vocab}] (the policy's vocabulary), got {bad}")

    def check_requests(self, args_methods: bool, extra_rewards=()) -> None:
        """Every batch checked as a request (ids in the policy's vocabulary; prompt + --max-new-tokens
        within the context of every model that reads the ids: the policy, the reward models) before any
        method decodes, so a run is refused whole, not after a method has run and been written. The
        sliding-window check of a static or hf ARGS engine is made for an explicit --backend; ``auto``
        makes it when it picks its engine."""
        from ..decoding.inputs import check_request
        from ..rewards.vocab import VocabReward
        models = [("policy", self.policy)]
        for name, reward in (("reward model", self.reward), *extra_rewards):
            if isinstance(reward, VocabReward):
                models += reward.extra_models(self.policy)
            elif reward is not self.policy and getattr(reward, "config", None) is not None:
                models.append((name, reward))
        vocab = self.policy.get_output_embeddings().out_features
        backend = self.args.backend if args_methods and self.args.backend != "auto" else "reference"
        for _, ids, mask, _ in self.batches:
            try:
                check_request(ids, mask, self.args.max_new_tokens, None, vocab=vocab, backend=backend, models=models)
            except ValueError as err:   # the prompts and --max-new-tokens are the user's
                raise UserError(f"--max-new-tokens {self.args.max_new_tokens}: {err}") from err

    def header(self) -> dict:
        a = self.args
        return {"command": self.command, "models": self.model_names, "seed": a.seed,
                "prompts": {"file": a.prompts, "offset": a.offset, "count": len(self.prompts)},
                "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "backend": a.backend,
                "dtype": getattr(a, "dtype", "float32"), "machine": machine_info()}

    def decoder_of(self, method: Method):
        """The ARGS decoder of ``method`` (built once: its engine then serves every batch), or None."""
        if not method.is_args:
            return None
        return args_decoder(method, self.policy, self.reward, self.tokenizer, max_new_tokens=self.args.max_new_tokens,
                            eos_ids=self.eos_ids, pad_id=self.pad_id, backend=self.args.backend,
                            compile=compile_of(self.args))

    def user_decoder(self, method: Method):
        """:meth:`decoder_of`, what it refuses said as the user's error (the options and --backend are the
        flags'), and the backend line printed once per distinct engine."""
        try:
            decoder = self.decoder_of(method)
        except ValueError as err:
            if not method.is_args:
                raise
            raise UserError(f"{method.name}: {err}") from err
        description = getattr(decoder, "backend_description", None)   # ARGS decoders (not pareto's models)
        if isinstance(description, str) and description not in self.described:
            self.described.add(description)
            info(f"backend: {description}")
        return decoder

    def generate_batch(self, method: Method, j: int, decoder=None, label: str | None = None) -> list[dict]:
        """Batch ``j`` of one method: records with the official fields, without metrics yet.

        Draws: ARGS rows use one generator per prompt (:func:`args_fast.integrations.parallel.prompt_seed` of the seed
        and the prompt's index in the prompts file); transformers' samplers draw from the global RNG,
        seeded from the seed and the batch's first prompt index. Either way a record never depends on
        which process ran its batch, or on how many did."""
        label = label or method.name
        chunk, ids, mask, indices = self.batches[j]
        if method.is_args:
            generator = parallel.prompt_generators(self.args.seed, indices)
        else:
            generator = torch.Generator().manual_seed(parallel.prompt_seed(self.args.seed, indices[0]))
        start = time.perf_counter()
        rows, stops = self.decode_batch(method, j, generator, decoder)
        elapsed = (time.perf_counter() - start) / len(chunk)
        # the reward scores prompt + continuation, with the EOS that ended it (the reward model
        # is trained on complete replies ending in <|im_end|>, as ARGS scores its last step)
        records = []
        for p, index, row_ids, m, gen, stop in zip(chunk, indices, ids, mask, rows, stops):
            prompt_ids = row_ids[m.bool()].tolist()
            records.append(make_record(id=p["id"], index=index, method=label, options=method.options,
                                       prompt=self.tokenizer.decode(prompt_ids),
                                       result=self.tokenizer.decode(gen, skip_special_tokens=True), elapsed=elapsed,
                                       num_tokens=len(gen), stopped=bool(stop), user_message=p["prompt"],
                                       _ids=prompt_ids + gen + stop, _prompt_len=len(prompt_ids)))
        return records

    def decode_batch(self, method: Method, j: int, generator, decoder):
        """(continuation ids per row, ``[eos]`` or ``[]`` per row) of batch ``j`` under ``method``."""
        _, ids, mask, _ = self.batches[j]
        return run_batch(method, self.policy, self.reward, self.tokenizer, ids, mask,
                         max_new_tokens=self.args.max_new_tokens, eos_ids=self.eos_ids, pad_id=self.pad_id,
                         generator=generator, backend=self.args.backend, decoder=decoder)

    def setup_key(self) -> dict:
        """What every record of a run depends on besides its method: stored with unfinished work, which
        a restarted run reuses only when this is unchanged."""
        h = self.header()
        key = {key: h[key] for key in ("models", "seed", "prompts", "max_new_tokens", "batch_size", "backend")}
        key["model_files"] = self.model_files
        if h["dtype"] != "float32":   # float32 runs keep the key of earlier runs
            key["dtype"] = h["dtype"]
        return key

    def run_method(self, method: Method, label: str | None = None) -> list[dict] | None:
        """One method over all prompts, scored: its batches dealt to the ranks (torchrun), each finished
        batch saved under ``out_dir/.partial/<label>/`` so an interrupted run resumes where it stopped.
        Rank 0 gets every record in prompt order; other ranks get None."""
        label = label or method.name
        run = parallel.BatchedRun([[p["id"] for p in chunk] for chunk, *_ in self.batches],
                                  [len(chunk) for chunk, *_ in self.batches],
                                  [int(mask.sum()) + len(chunk) * self.args.max_new_tokens
                                   for chunk, _, mask, _ in self.batches],
                                  work_dir=self.partial_dir / label,
                                  # "records": the record schema (make_record) of the stored batches
                                  check={**self.setup_key(), "method": label, "options": method.options, "records": 2},
                                  desc=label, w=self.world, validate=self._records_problem)
        self.progress[label] = run
        if run.finished_prompts:
            info(f"{label}: resuming, {run.finished_prompts} of {run.total_prompts} prompts already done "
                 f"({self.partial_dir / label})")
        # built before the progress bar opens (its backend line then prints on a line of its own), and
        # only when there is something left to decode
        decoder = self.user_decoder(method) if run.finished_prompts < run.total_prompts else None

        def one_batch(j):
            return self.score(self.generate_batch(method, j, decoder, label))
        return run.run(one_batch)

    def _records_problem(self, j: int, records: list[dict]) -> str | None:
        """``validate`` of a saved batch: one scored record per prompt of batch ``j``, in order."""
        ids = [p["id"] for p in self.batches[j][0]]
        if [r.get("id") for r in records] != ids:
            return f"records of prompts {[r.get('id') for r in records]}, not {ids}"
        missing = sorted({key for r in records for key in ("result", "reward", "method") if key not in r})
        return f"records without {', '.join(missing)}" if missing else None

    def saved_note(self) -> str:
        """What an interrupted run leaves behind, in one line."""
        parts = [f"{label} {run.finished_prompts}/{run.total_prompts}" for label, run in self.progress.items()]
        if not parts:
            return "nothing finished yet"
        return (f"saved prompts done: {', '.join(parts)} in {self.partial_dir}; run the same command again to "
                "finish the rest")

    def finish(self) -> None:
        """The run's files are written: its unfinished-work store goes."""
        parallel.barrier()
        if self.world.is_main:
            shutil.rmtree(self.partial_dir, ignore_errors=True)

    def score(self, records: list[dict]) -> list[dict]:
        """Add reward, diversity, coherence and the judges to each record (drops the token ids)."""
        from ..rewards.vocab import VocabReward
        ids, cut = [r.pop("_ids") for r in records], [r.pop("_prompt_len") for r in records]
        if isinstance(self.reward, VocabReward):   # token rewards summed over the response, computed literally
            rewards = self.reward.sequence_rewards([s[:n] for s, n in zip(ids, cut)], [s[n:] for s, n in zip(ids, cut)])
        else:
            rewards = metrics.score_sequences(self.reward, ids, self.pad_id)
        results = [r["result"] for r in records]
        coherence = self.embedder.coherence([r["user_message"] for r in records], results)
        judges = metrics.judge_scores(self.embedder, results)
        for i, r in enumerate(records):
            r.update(reward=rewards[i], diversity=metrics.diversity(r["result"]), coherence=coherence[i],
                     **{name: values[i] for name, values in judges.items()})
        return records


def summarize(records: list[dict], baseline: list[dict] | None) -> dict:
    out = {"n": len(records)}
    for key in ("reward", "diversity", "coherence") + metrics.JUDGES + ("num_tokens", "elapsed"):
        out[key], out[f"{key}_std"] = metrics.mean_std([r[key] for r in records])
    out["stopped"] = sum(r["stopped"] for r in records) / len(records)
    if baseline is not None:
        if [r["id"] for r in records] != [r["id"] for r in baseline]:
            raise ValueError("win rate needs the same prompts in the same order as the baseline")
        out["win_rate_vs_greedy"] = metrics.win_rate([r["reward"] for r in records], [r["reward"] for r in baseline])
    return out


def against_greedy(summary: dict, method: str = "args-greedy") -> dict | None:
    """How ``method`` differs from greedy decoding on the same prompts: the reward gain in units of
    greedy's reward std, the win rate, and the difference of each other metric (method - greedy)."""
    g, a = summary.get("greedy"), summary.get(method)
    if not g or not a or "reward" not in a:
        return None
    gain = (a["reward"] - g["reward"]) / g["reward_std"] if g["reward_std"] > 0 else float("nan")
    out = {"reward gain (greedy std units)": gain, "win rate vs greedy": a["win_rate_vs_greedy"]}
    for key in ("diversity", "coherence") + metrics.JUDGES:
        out[f"{key} - greedy"] = a[key] - g[key]
    return out


def _fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown_table(summary: dict, header: dict, title: str) -> str:
    m = header["machine"]
    lines = [f"# {title}", "",
             f"- command: `{header['command']}`",
             f"- policy: {header['models']['policy']}; reward model: {header['models']['reward_model']}",
             f"- prompts: {header['prompts']['count']} held-out prompts from `{header['prompts']['file']}` "
             f"(offset {header['prompts']['offset']}); max new tokens {header['max_new_tokens']}; "
             f"batch size {header['batch_size']}; seed {header['seed']}; ARGS backend {header['backend']}",
             f"- machine: {m['cpu']} ({m['cpu_count']} CPUs, {m.get('processes', 1)} process(es) of {m['torch_threads']} "
             f"torch threads), GPU {m['gpu']}; "
             f"python {m['python']}, torch {m['torch']}, transformers {m['transformers']}",
             "- reward: the decoding reward model on prompt + continuation; win rate vs greedy by that reward, "
             "ties (|difference| <= 1e-4) count 1/2; diversity and coherence as in the ARGS paper (coherence "
             "with all-MiniLM-L6-v2); VADER = compound sentiment, the default reward model's training label "
             "(optimised, not held out); held-out judges: MiniLM zero-shot positivity and harmlessness = "
             "1 - P(profane) (alt-profanity-check); all means over prompts (± population std)", "",
             "| Method | Options | Avg reward | Win rate vs greedy | Diversity | Coherence | VADER | "
             "MiniLM positivity | Harmlessness | Tokens | Stopped | s/prompt |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        opts = ", ".join(f"{k}={v}" for k, v in s.get("options", {}).items()) or "-"
        if "unavailable" in s:
            lines.append(f"| {name} | {opts} | unavailable: {s['unavailable']} |" + " |" * 9)
            continue
        lines.append(f"| {name} | {opts} | {_fmt(s['reward'])} ± {_fmt(s['reward_std'])} | "
                     f"{_fmt(s.get('win_rate_vs_greedy'))} | {_fmt(s['diversity'])} | {_fmt(s['coherence'])} | "
                     f"{_fmt(s['vader'])} | {_fmt(s['minilm_positivity'])} | {_fmt(s['harmlessness'])} | {_fmt(s['num_tokens'], 1)} | "
                     f"{_fmt(s['stopped'], 2)} | {_fmt(s['elapsed'], 2)} |")
    return "\n".join(lines) + "\n"


@releases_locks
def run_eval(args) -> int:
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    # the default list runs what can run here; the table still lists a method that cannot, saying why
    default = args.methods == ",".join(available_methods())
    try:
        methods = make_methods(METHODS if default else names, k=args.k, w=args.w, temperature=args.temperature,
                               unavailable_ok=default)
    except ValueError as err:   # what --methods names
        raise UserError(str(err)) from err
    ev = Evaluation(args, command_line("eval"))
    args.interrupt_note = ev.saved_note   # what Ctrl-C reports as saved
    if any(m.is_args for m in methods):
        ev.check_k([args.k])
    ev.check_requests(any(m.is_args for m in methods))
    summary, greedy = {}, None
    # greedy is the win-rate baseline: it always runs, and first
    methods = [Method("greedy")] + [m for m in methods if m.name != "greedy"]
    for method in methods:
        if method.name == "contrastive" and (reason := contrastive_unavailable()):
            summary[method.name] = {"unavailable": reason, "options": method.options}
            continue
        records = ev.run_method(method)
        if records is None:   # another rank than 0: rank 0 writes everything
            continue
        write_jsonl(ev.out_dir / f"{method.name}.jsonl", records)
        if method.name == "greedy":
            greedy = records
        summary[method.name] = {"options": method.options, **summarize(records, greedy)}
    if ev.world.is_main:
        header = ev.header()
        report = {**header, "methods": summary, "args_greedy_vs_greedy": against_greedy(summary)}
        (ev.out_dir / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
        table = markdown_table(summary, header, "ARGS evaluation (held-out chitchat prompts)")
        if report["args_greedy_vs_greedy"]:
            table += "\n## args-greedy against greedy\n\n| Measure | Value |\n|---|---|\n" + "".join(
                f"| {name} | {_fmt(value)} |\n" for name, value in report["args_greedy_vs_greedy"].items())
        (ev.out_dir / "summary.md").write_text(table)
        print(table)
    ev.finish()
    return 0
