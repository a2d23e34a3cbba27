"""Files of long runs: the user's input files read with errors that name the flag, result files
written whole or not at all, output folders, and what a result file records about its run."""
from __future__ import annotations

import functools
import json
import os
import platform
import shlex
import socket
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


def user_json_lines(flag: str, path: str):
    """``(where, value)`` of each non-blank line of the JSONL file the user named with ``flag``; ``where``
    ("FLAG PATH: line N") is for the caller's own errors. The file being unusable (see
    :func:`read_user_text`) or a line that is not JSON is a UserError naming the flag, file and line."""
    for number, line in enumerate(text_lines(read_user_text(flag, path)), 1):
        if not line.strip():
            continue
        where = f"{flag} {path}: line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where} is not JSON ({err.msg}, column {err.colno})") from None
        yield where, value


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
    """The records (JSON objects, one a line; blank lines skipped) of a result file; a file that cannot
    be read, a line that is not JSON or not an object is a ValueError naming the file and the line."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}: line {number} is not JSON ({err.msg})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}: line {number} is not a JSON object")
                records.append(record)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it: {err.strerror or err}") from None
    return records


def read_json(path: Path):
    """A JSON file this package wrote (a setup key, calibration statistics), or None when it is missing
    or damaged (the caller then recomputes or refuses, saying which file)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def command_line(name: str) -> str:
    """The command as typed: ``args-fast eval ...`` (or ``python -m args_fast eval ...``)."""
    argv = [shlex.quote(a) for a in sys.argv]
    if len(sys.argv) > 1 and sys.argv[1] == name:
        return " ".join(["args-fast"] + argv[1:])
    return " ".join(argv)


# --------------------------------------------------------------------------------------- one run per output
def output_file(flag: str, path: str) -> Path:
    """A result file the user named with ``flag`` (``generate --output``): not a directory, its folder
    created if needed and writable; each failure a ValueError naming the flag, before any work."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{flag} {path}: is a directory (give a .jsonl file path)")
    make_out_dir(flag, str(out.parent))
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"{flag} {path}: not writable")
    return out


class RunLock:
    """An exclusive ``flock`` on ``lock_path``, held while one run writes an output. The kernel drops
    it when its process ends, however it ends (kill -9 included), so a lock file left behind by a dead
    run never blocks the next. :meth:`release` removes the file."""

    def __init__(self, lock_path: Path, fd: int | None):
        self.path, self.fd = lock_path, fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:   # removed before unlocking: a run that opened this file meanwhile sees it is gone and retries
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _try_lock(lock_path: Path) -> tuple[int | None, str | None]:
    """(the locked fd, None); (None, who holds it) when another process does; (None, None) on a file
    system without locks."""
    import fcntl
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            return None, holder
        except OSError:   # a file system without locks: run unlocked rather than not at all
            os.close(fd)
            print(f"note: cannot lock {lock_path} on this file system; make sure no other run writes there",
                  file=sys.stderr)
            return None, None
        try:   # the holder before us may have removed the file after we opened it: ours is then stale
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            return fd, None
        os.close(fd)


_SCOPES: list[list[RunLock]] = []


def lock_run(flag: str, target, lock_path: Path) -> RunLock:
    """Make this the only run writing ``target`` (named by ``flag``): a ValueError (one line naming the
    flag, the output and the process holding it) when another live run holds ``lock_path``. Under
    torchrun rank 0 takes the lock and every rank gets its answer. Released when the command that took
    it returns (:func:`releases_locks`), else when the process ends."""
    w = parallel.world()
    fd, holder, refused = None, None, None
    if w.is_main:
        try:
            fd, holder = _try_lock(Path(lock_path))
        except OSError as err:
            refused = f"{flag} {target}: cannot create the lock file {lock_path}: {err.strerror or err}"
    if holder is not None:
        pid, _, host = holder.partition(" ")
        who = (f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")) if pid \
            else "another process"
        refused = (f"{flag} {target}: another run is writing it ({who} holds {lock_path}); wait for it to end "
                   f"or give another {flag}")
    if w.distributed:
        import torch.distributed as dist
        box = [refused]
        dist.broadcast_object_list(box, src=0)
        refused = box[0]
    if refused:
        raise UserError(refused)
    lock = RunLock(Path(lock_path), fd)
    if _SCOPES:
        _SCOPES[-1].append(lock)
    return lock


def releases_locks(command):
    """Decorator of a command: the run locks it takes (:func:`lock_run`) are released when it returns or
    raises, so a later command in the same process (tests, notebooks) is not refused."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _SCOPES.append([])
        try:
            return command(*args, **kwargs)
        finally:
            for lock in _SCOPES.pop():
                lock.release()
    return wrapper


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
