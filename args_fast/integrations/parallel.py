"""Data-parallel runs under ``torchrun``, and runs that lose nothing.

The unit of work is a *batch* of prompts, formed exactly as one process forms it (consecutive
prompts, ``--batch-size`` each). Batches are dealt whole to the ranks, so a batch, its padding and
hence its tokens never depend on the world size; rank 0 gathers every batch's records and writes the
files one process would write, in the same order. Draws: a prompt's ARGS uniforms come from its own
generator seeded by :func:`prompt_seed` (the run's seed and the prompt's index in its prompts file),
so 1, 2 or 4 processes give the same tokens.

Resumption: a run with a ``work_dir`` appends each finished batch, scored, as one JSON line to
``work_dir/part-<rank>.jsonl`` (flushed and fsynced). A restarted run (any world size) reads every
part file, skips the batches already there and runs the rest; a torn last line (a crash while
writing) is dropped, and the file truncated back to its last whole line before anything is appended.
A line that is otherwise unreadable, a batch with missing or foreign records, or one stored twice
with different records stops the run with one line naming the file (:func:`read_parts`, BatchedRun).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from ..validation import UserError


# --------------------------------------------------------------------------------------- the world
@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        """This rank's default device: ``cuda:LOCAL_RANK`` where CUDA is, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


_WORLD: World | None = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer, got {value!r}") from None


def world() -> World:
    """The process group set up by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, ...), joined once; a
    plain process is rank 0 of 1. CUDA ranks use NCCL for the collectives, CPU ranks gloo."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = _env_int("WORLD_SIZE", 1)
    w = World(_env_int("RANK", 0), size, _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", size))
    if w.distributed and not dist.is_initialized():
        if w.device().type == "cuda":
            torch.cuda.set_device(w.device())
        # records are gathered as Python objects: gloo carries them on every machine (NCCL would need
        # them staged on the GPU); the models never communicate
        dist.init_process_group("gloo")
    _WORLD = w
    return w


def shutdown() -> None:
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = None


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s own generator in a run seeded ``seed``: a function of the two
    only (numpy's SeedSequence mixes them), never of the batch, the rank or the world size."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


def prompt_generators(seed: int, indices, device="cpu") -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(prompt_seed(seed, i)) for i in indices]


def assign(costs: list[int], size: int) -> list[list[int]]:
    """Batches dealt to ``size`` ranks: longest first, each to the least-loaded rank (ties: lowest rank),
    so every rank gets about the same number of tokens. Deterministic; each rank's list is in batch order."""
    load = [0] * size
    out: list[list[int]] = [[] for _ in range(size)]
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(size), key=lambda r: (load[r], r))
        out[r].append(j)
        load[r] += costs[j]
    return [sorted(js) for js in out]


# --------------------------------------------------------------------------------------- part files
@dataclass
class SavedBatch:
    """One line of a part file: where it is (for error messages) and what it holds."""
    path: Path
    line: int
    entry: dict

    @property
    def where(self) -> str:
        return f"{self.path}: line {self.line}"


def _entry_problem(entry) -> str | None:
    """Why a parsed line is not a saved batch ({"batch": int >= 0, "key", "check", "records": [dict, ...]})."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    missing = [k for k in ("batch", "key", "check", "records") if k not in entry]
    if missing:
        return f"no {', '.join(missing)}"
    if type(entry["batch"]) is not int or entry["batch"] < 0:
        return f"batch {entry['batch']!r} is not a batch index"
    if not isinstance(entry["records"], list) or not all(isinstance(r, dict) for r in entry["records"]):
        return "records is not a list of objects"
    return None


def _corrupt(where: str, path: Path, what: str) -> UserError:
    return UserError(f"{where} {what}: the saved partial results are corrupt; delete {path} to run its batches "
                      "again")


def read_parts(work_dir: Path, repair_own: Path | None = None) -> dict[int, list[SavedBatch]]:
    """Every saved batch of every ``part-*.jsonl`` in ``work_dir``: batch index -> its lines (several
    when a batch was saved more than once, e.g. under other settings). A last line without its newline,
    or not JSON, is torn (a crash mid-write): dropped, and ``repair_own`` (this rank's file) truncated
    back to its last whole line. Any other line that is not JSON or not a saved batch is corruption: a
    ValueError naming the file and the line (the run stops before any work)."""
    done: dict[int, list[SavedBatch]] = {}
    if not work_dir.is_dir():
        return done
    for path in sorted(work_dir.glob("part-*.jsonl")):
        try:
            data = path.read_bytes()
        except OSError as err:
            raise UserError(f"{path}: cannot read the saved partial results: {err.strerror or err}") from None
        lines = data.split(b"\n")
        whole, tail = lines[:-1], lines[-1]    # tail: bytes after the last newline (b"" if none)
        good_bytes = 0
        for number, line in enumerate(whole, 1):
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if number == len(whole) and not tail:   # the last line, torn inside a multi-byte write
                    break
                raise _corrupt(f"{path}: line {number}", path, "is not JSON") from None
            problem = _entry_problem(entry)
            if problem is not None:
                raise _corrupt(f"{path}: line {number}", path, f"is not a saved batch ({problem})")
            done.setdefault(entry["batch"], []).append(SavedBatch(path, number, entry))
            good_bytes += len(line) + 1
        if good_bytes != len(data):
            print(f"note: dropped a torn last line of {path} (an interrupted write)", file=sys.stderr)
            if repair_own is not None and path == repair_own:
                with open(path, "r+b") as f:
                    f.truncate(good_bytes)
    return done


def append_line(path: Path, entry: dict) -> None:
    """One whole JSON line, flushed to disk before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------- progress
class _Progress:
    """Prompts done over all ranks: each rank adds its batches (run now or found done) to a counter in
    torchrun's key-value store (no collective, no waiting); rank 0's bar reads it."""

    def __init__(self, w: World, key: str, total: int, desc: str):
        self.w, self.key, self.total, self.shown = w, key, total, 0
        self.store = None
        if w.distributed:
            try:
                self.store = dist.distributed_c10d._get_default_store()
            except Exception:   # a private helper: without it the bar counts rank 0's prompts only
                self.store = None
        self.bar = None
        if w.is_main:
            from tqdm import tqdm

            from .console import progress_disabled   # --quiet / TQDM_DISABLE
            self.bar = tqdm(total=total, desc=desc, unit="prompt", file=sys.stderr, disable=progress_disabled())

    def add(self, n: int) -> None:
        if self.store is not None:
            self.store.add(self.key, n)
            self.refresh()
        else:
            self._show(self.shown + n)

    def _show(self, count: int) -> None:
        if self.bar is not None and count > self.shown:
            self.bar.update(count - self.shown)
        self.shown = max(self.shown, count)

    def refresh(self) -> int:
        if self.store is not None:
            self._show(self.store.add(self.key, 0))
        return self.shown

    def wait_all(self) -> None:
        """Rank 0, its own batches done: keep the bar moving until every rank has finished."""
        if self.store is not None and self.w.is_main:
            while self.refresh() < self.total:
                time.sleep(0.2)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------- the run
class BatchedRun:
    """One pass of ``fn`` over batches, sharded over the ranks and resumable.

    ``keys[j]``: what identifies batch j's inputs (e.g. its prompt ids); a stored batch is reused
    only when its key and ``check`` (the settings its records depend on) equal this run's.
    ``sizes[j]``: prompts in batch j (the progress bar's unit); ``costs[j]``: its work (tokens),
    for the deal. ``fn(j)`` returns batch j's records (JSON-serialisable dicts), ``per_prompt`` per prompt
    (e.g. one per decoding method).

    A stored batch of this run must hold ``per_prompt * sizes[j]`` records that ``validate(j, records)`` accepts
    (None, or the reason it does not: e.g. a record of another prompt), and be stored once (or
    identically): anything else is a ValueError naming the file and line, raised before any work."""

    _runs = 0

    def __init__(self, keys: list, sizes: list[int], costs: list[int], *, work_dir: Path | None = None,
                 check: dict | None = None, desc: str = "", w: World | None = None,
                 validate: Callable[[int, list[dict]], str | None] | None = None, per_prompt: int = 1):
        self.sizes, self.costs, self.per_prompt = sizes, costs, per_prompt
        # compared with what a part file holds, so JSON's view of it (tuples become lists)
        self.keys = json.loads(json.dumps(keys))
        self.work_dir, self.check, self.desc = work_dir, json.loads(json.dumps(check or {})), desc
        self.w = w or world()
        self.done: dict[int, list[dict]] = {}
        self.own_part = None
        if work_dir is not None:
            if work_dir.exists() and not work_dir.is_dir():
                raise UserError(f"{work_dir}: the store of this run's finished batches is a file, not a folder; "
                                 "move it away")
            self.own_part = work_dir / f"part-{self.w.rank}.jsonl"
            for j, saved in read_parts(work_dir, repair_own=self.own_part).items():
                # lines of other settings (check) or other inputs (key) are another run's: not reused
                ours = [s for s in saved if j < len(keys) and s.entry["key"] == self.keys[j]
                        and s.entry["check"] == self.check]
                if not ours:
                    continue
                first = ours[0]
                for other in ours[1:]:
                    if other.entry["records"] != first.entry["records"]:
                        raise _corrupt(f"{first.where} and {other.where}", other.path,
                                       f"both hold batch {j} of this run, with different records")
                records = first.entry["records"]
                problem = (f"holds {len(records)} records for the {sizes[j]} prompts of batch {j}"
                           if len(records) != per_prompt * sizes[j] else None)
                if problem is None and validate is not None and (reason := validate(j, records)):
                    problem = f"batch {j}: {reason}"
                if problem is not None:
                    raise _corrupt(first.where, first.path, problem)
                self.done[j] = records
        BatchedRun._runs += 1
        self.serial = BatchedRun._runs

    @property
    def finished_prompts(self) -> int:
        return sum(self.sizes[j] for j in self.done)

    @property
    def total_prompts(self) -> int:
        return sum(self.sizes)

    def run(self, fn: Callable[[int], list[dict]]) -> list[dict] | None:
        """Rank 0: every batch's records, in batch order; other ranks: None."""
        mine = assign(self.costs, self.w.size)[self.w.rank]
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        progress = _Progress(self.w, f"args_fast/progress/{self.serial}", self.total_prompts, self.desc)
        try:
            records = {}
            for j in mine:
                if j in self.done:
                    records[j] = self.done[j]
                    progress.add(self.sizes[j])
                    continue
                records[j] = fn(j)
                if len(records[j]) != self.per_prompt * self.sizes[j]:   # a caller's bug: a resume could not check it
                    raise RuntimeError(f"batch {j} made {len(records[j])} records for {self.sizes[j]} prompts")
                if self.own_part is not None:
                    append_line(self.own_part, {"batch": j, "key": self.keys[j], "check": self.check,
                                                "records": records[j]})
                self.done[j] = records[j]
                progress.add(self.sizes[j])
            progress.wait_all()
        finally:
            progress.close()
        if self.w.distributed:
            gathered = [None] * self.w.size if self.w.is_main else None
            dist.gather_object(records, gathered, dst=0)
            if not self.w.is_main:
                return None
            for part in gathered:
                records.update(part)
        return [r for j in range(len(self.keys)) for r in records[j]]


def barrier() -> None:
    if world().distributed:
        dist.barrier()
