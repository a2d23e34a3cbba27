"""benchmarks/gpu_session.sh and the grid it runs (benchmarks/bench_gpu.py --plan session), on CPU.

The session script is meant for the GPU machine; ``DRY_RUN=1`` runs every one of its steps here on
tiny shapes. These tests run that dry run and check what lands in $OUT (the files, at most 8, and the
benchmark rows of every grid section), that the grid writes its results row by row (a run killed midway
leaves valid files), that a spent time budget stops it launching points, and that the official-style
loop it benchmarks picks the same tokens as the reference backend.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
SECTIONS = ["smoke", "headline", "batch-8", "batch-32", "k-40", "opt-1.3b"]
STEPS = ["env", "install", "tests", "selfcheck", "grid"]

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402


def _env(**extra):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **extra}
    for name in ("CUDA_VISIBLE_DEVICES", "SECTIONS", "SKIP_TESTS", "SESSION_BUDGET_S", "REPEATS", "POINT_TARGET_S"):
        env.pop(name, None)
    env.update(extra)
    return env


def test_dry_run_session_writes_every_step_and_section(tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=_env(DRY_RUN="1", OUT=str(out)),
                          capture_output=True, text=True, timeout=480)
    wall = time.monotonic() - t0
    session_log = (out / "session.log").read_text() if (out / "session.log").exists() else ""
    assert proc.returncode == 0, f"exit {proc.returncode} after {wall:.0f} s\n{session_log}\n{proc.stderr[-3000:]}"

    files = sorted(p.name for p in out.iterdir())
    assert all(p.is_file() for p in out.iterdir())
    assert len(files) <= 8, files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert {"session.log", "env.txt", "install.log", "tests.log", "bench.log", "bench_gpu.json",
            "bench_gpu.md"} <= set(files), files
    for step in STEPS:
        assert re.search(rf"\] OK +{step}\b", session_log), f"step {step} did not pass:\n{session_log}"
    assert "every step passed" in session_log
    assert "self-check: 0 failed" in (out / "tests.log").read_text()
    assert "flash-attn 4" in (out / "env.txt").read_text()

    data = json.loads((out / "bench_gpu.json").read_text())
    meta, rows = data["meta"], data["results"]
    assert meta["plan"] == "session" and meta["sections"] == SECTIONS
    assert meta["status"] in ("complete",) or meta["status"].startswith("stopped early"), meta["status"]
    # every section has rows, in the plan's order; the smoke pass is measured in full
    seen = [r["section"] for r in rows]
    assert [s for s in SECTIONS if s in seen] == SECTIONS, sorted(set(seen))
    assert sorted(set(seen), key=seen.index) == SECTIONS
    smoke = {r["backend"]: r for r in rows if r["section"] == "smoke"}
    for backend in ("hf-generate", "greedy", "reference", "official-style", "hf", "static", "static-triton",
                    "static-csrc", "static-compiled", "fused-hf", "fused-static", "fused-static-triton",
                    "fused-static-compiled"):
        assert backend in smoke, sorted(smoke)
    # hf-generate's decode time is a difference of two timings (generate(T + 1) - generate(1)): on tiny
    # shapes and a loaded CPU it can come out <= 0, and then the row says so instead of a number
    assert smoke["hf-generate"].get("ms_per_step") or "not resolved" in smoke["hf-generate"]["note"]
    for backend in ("greedy", "reference", "official-style", "hf", "static", "fused-static"):
        row = smoke[backend]
        assert row.get("ms_per_step", 0) > 0 and row["tokens_per_s"] > 0 and row["x_floor"] > 0, row
        assert row["runs"] >= 1 and row["floor_ms_per_step"] > 0
    for backend in ("static-compiled", "fused-static-compiled"):   # the registry's compiled-step backend
        assert smoke[backend].get("ms_per_step") or smoke[backend]["note"], smoke[backend]
    if meta["status"] == "complete":
        for section in SECTIONS:
            measured = [r for r in rows if r["section"] == section and r.get("ms_per_step")]
            assert measured, f"section {section} has no measured row"
    md = (out / "bench_gpu.md").read_text()
    assert "| smoke | smollm2-135m | official-style |" in md
    assert "headline" in (out / "bench.log").read_text()


def test_grid_rows_are_written_as_measured(tmp_path):
    """Killed midway, the grid leaves a valid JSON of the rows measured so far (status still 'running')."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--dry-run-cpu", "--plan", "session",
           "--sections", "smoke", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    rows, deadline = [], time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                rows = json.loads((out / "bench_gpu.json").read_text())["results"]
            except (OSError, ValueError):
                rows = []
            if len(rows) >= 3:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert len(rows) >= 3, proc.stderr.read()[-3000:] if proc.stderr else ""
    data = json.loads((out / "bench_gpu.json").read_text())   # whole, though the writer was killed
    assert len(data["results"]) >= 3
    assert data["meta"]["status"] == "running"
    assert [r["backend"] for r in data["results"][:3]] == ["hf-generate", "greedy", "reference"]
    assert (out / "bench_gpu.md").read_text().startswith("# ARGS decoding benchmark")


def test_a_spent_time_budget_stops_launching_points(tmp_path):
    assert bench_gpu.main(["--dry-run-cpu", "--plan", "session", "--sections", "smoke,headline",
                           "--out", str(tmp_path), "--time-budget-s", "0"]) == 0
    data = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert data["meta"]["status"].startswith("stopped early (time budget")
    rows = data["results"]
    assert {r["section"] for r in rows} == {"smoke", "headline"}
    assert all(r["note"].startswith("not run: time budget") and "ms_per_step" not in r for r in rows)


def test_official_style_loop_picks_the_reference_tokens():
    """k full reward caches, the winner's copied into all k each step: the same greedy ARGS tokens as the
    reference backend (every candidate's reward from a full forward of its whole sequence)."""
    from args_fast import ARGSDecoder
    for name in ("smollm2-135m", "opt-1.3b"):
        policy, reward = bench_gpu.build_models(name, True, torch.float32, torch.device("cpu"))
        with torch.no_grad():   # peaked logits and rewards, so a wrong reward changes the tokens
            for model in (policy, reward):
                for p in model.parameters():
                    if p.dim() == 2:
                        p.normal_(0, 0.15)
        ids = torch.randint(3, policy.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
        mask, k, steps = torch.ones_like(ids), 4, 6

        def run(engine):
            engine.prefill(ids, mask, steps)
            tokens, rewards = [], []
            for t in range(steps):
                token, chosen, _ = engine.step(None, last=t == steps - 1)
                tokens.append(token.clone())
                rewards.append(chosen.clone())
            return torch.stack(tokens, 1), torch.stack(rewards, 1)
        reference = ARGSDecoder(policy, reward, k=k, w=1.0, mode="greedy", max_new_tokens=steps, eos_token_id=[],
                                pad_token_id=0, backend="reference").engine
        want_tokens, want_rewards = run(reference)
        official = bench_gpu.OfficialStyleEngine(policy, reward, k)
        got_tokens, got_rewards = run(official)
        assert torch.equal(got_tokens, want_tokens), name
        torch.testing.assert_close(got_rewards, want_rewards, rtol=1e-4, atol=1e-4)
        assert official.rcache.layers[0].keys.shape[0] == 2 * k   # k full caches per row


@pytest.mark.parametrize("section", SECTIONS)
def test_the_session_plan_keeps_the_issue_order_and_shapes(section):
    gpu = {s["name"]: s for s in bench_gpu.session_plan(tiny=False)}
    assert list(gpu) == SECTIONS
    s = gpu[section]
    expected = {"smoke": ("smollm2-135m", 1, 128, [10]), "headline": ("llama-2-7b", 1, 1024, [10]),
                "batch-8": ("llama-2-7b", 8, 1024, [10]), "batch-32": ("llama-2-7b", 32, 1024, [10]),
                "k-40": ("llama-2-7b", 1, 1024, [40]), "opt-1.3b": ("opt-1.3b", 1, 1024, [10])}[section]
    assert (s["model"], s["batch"], s["prompt"], s["k"]) == expected
    if section != "smoke":
        assert s["new_tokens"] == 128
