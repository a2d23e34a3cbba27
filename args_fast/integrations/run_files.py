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

from . import parallel


def read_user_text(flag: str, path: str) -> str:
    """The text of a file the user named with ``flag``, as UTF-8 (a leading BOM dropped); every way it can
    fail (missing, a directory, unreadable, not UTF-8) is a ValueError naming the flag and the file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{flag} {path}: is a directory, not a file") from None
    except PermissionError:
        raise ValueError(f"{flag} {path}: permission denied") from None
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot read it: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{flag} {path}: not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
                         f"(line {line})") from None
    return text.removeprefix("\ufeff")


def text_lines(text: str) -> list[str]:
    """Lines as text-mode ``open`` reads them (``\\n``, ``\\r\\n`` and ``\\r`` end a line), without the ends."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def make_out_dir(flag: str, path: str) -> Path:
    """``path`` created (with its parents) if needed; an OSError becomes a ValueError naming the flag."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{flag} {path}: exists and is not a directory") from None
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot create it: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: not writable")
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
