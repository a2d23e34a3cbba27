"""Files of long runs: the user's input files read with errors that name the flag, result files
written whole or not at all, output folders, and what a result file records about its run."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from ..validation import UserError
from . import parallel
from .console import progress_disabled, quiet, set_quiet  # noqa: F401  (the commands import them from here)


def read_user_text(flag: str, path: str) -> str:
    """The text of a file the user named with ``flag``, as UTF-8 (a leading BOM dropped); ``-`` reads
    standard input. Every way it can fail (missing, a directory, unreadable, not UTF-8) is a
    :class:`UserError` naming the flag and the file."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{flag} {path}: is a directory, not a file") from None
    except PermissionError:
        raise UserError(f"{flag} {path}: permission denied") from None
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot read it: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{flag} {path}: not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
                         f"(line {line})") from None
    return text.removeprefix("\ufeff")


def text_lines(text: str) -> list[str]:
    """Lines as text-mode ``open`` reads them (``\\n``, ``\\r\\n`` and ``\\r`` end a line), without the ends."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def make_out_dir(flag: str, path: str) -> Path:
    """``path`` created (with its parents) if needed; an OSError becomes a UserError naming the flag."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag} {path}: exists and is not a directory") from None
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot create it: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: not writable")
    return Path(path)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import transformers
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "processes": parallel.world().size,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform()}


def write_jsonl(path: Path, records: list[dict]):
    """The whole file or nothing: written beside ``path``, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def command_line(name: str) -> str:
    """The command as typed: ``args-fast eval ...`` (or ``python -m args_fast eval ...``)."""
    argv = [shlex.quote(a) for a in sys.argv]
    if len(sys.argv) > 1 and sys.argv[1] == name:
        return " ".join(["args-fast"] + argv[1:])
    return " ".join(argv)


# --------------------------------------------------------------------------------------- result records
# The fields every JSONL record of `generate --output`, `eval`, `sweep` and `pareto` starts with, in
# this order (docs/cli.md lists their meanings). The official ARGS fields first, then ours; a command
# appends its own measurements (eval: diversity, coherence, judges; pareto: lambda, relevance, ...).
RECORD_FIELDS = ("id", "index", "method", "options", "prompt", "result", "response", "elapsed", "reward", "steps",
                 "num_tokens", "stopped")


def make_record(*, id, index: int, method: str, options: dict, prompt: str, result: str, elapsed: float,
                num_tokens: int, stopped: bool, reward: float | None = None, **extra) -> dict:
    """One result record: a continuation of one prompt by one decoding method.

    ``prompt`` is the text the policy saw (chat template included), ``result`` the continuation (up to
    the EOS that ended it, which is not included), ``response`` = prompt + result, ``elapsed`` the
    seconds of the batch that decoded it divided by its rows (so sums over records are totals),
    ``num_tokens`` the tokens of ``result``, ``stopped`` whether an EOS ended it (else the token limit),
    ``steps`` the decoding steps this row took (``num_tokens``, plus one for that EOS), ``reward`` the
    reward model's score of the whole response (None until scored). ``extra`` fields follow."""
    record = {"id": id, "index": int(index), "method": method, "options": dict(options), "prompt": prompt,
              "result": result, "response": prompt + result, "elapsed": float(elapsed),
              "reward": None if reward is None else float(reward), "steps": int(num_tokens) + bool(stopped),
              "num_tokens": int(num_tokens), "stopped": bool(stopped)}
    clash = sorted(set(extra) & set(record))
    if clash:
        raise TypeError(f"make_record: {clash} are fields of their own, not extras")
    record.update(extra)
    return record


# --------------------------------------------------------------------------------------- what a command says
def info(message: str) -> None:
    """An info line on stderr (loading, backend, resuming, files written): rank 0 only, not with --quiet."""
    if not quiet() and parallel.world().is_main:
        print(message, file=sys.stderr, flush=True)
