"""Running ``python -m args_fast`` as real processes (one, or N under torchrun) from the tests."""
import os
import subprocess
import sys
import time


def process_command(argv, nproc, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    if nproc == 1:
        return [sys.executable, "-m", "args_fast", *argv], env
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--log-dir", str(tmp_path / f"torchrun-logs-{time.monotonic_ns()}"), "-m", "args_fast", *argv], env


def run_processes(argv, nproc, tmp_path):
    cmd, env = process_command(argv, nproc, tmp_path)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out
