"""Compile-only check: the Triton kernels lower all the way to a cubin for real GPUs, without a GPU.

The other kernel tests run under TRITON_INTERPRET=1 (conftest), which never builds TTGIR/LLVM/PTX, so
errors that only appear when compiling for hardware (tl.dot shape/dtype rules, layouts, constexpr
typing, ptxas failures, shared memory past the device limit) would first show up on a GPU machine.

How: one subprocess (the interpreter must be off, and conftest turns it on in this process) imports the
kernel modules, runs each module's real ``_launch`` on small CPU tensors with the kernels swapped for
recorders, and compiles every recorded launch for sm_90 (H100) and sm_80 (A100) through Triton's own
launch path (the JIT binder's specialization -> ``ASTSource`` -> ``triton.compile`` with an explicit
``GPUTarget``; ptxas is the one Triton ships). So the constexprs (BLOCK_M, DOT_FP32, PRECISION,
num_warps, ...), the scalar/pointer types and the alignment/``== 1`` specializations are exactly what
``_launch`` produces, not a copy of its logic. The only GPU-only value filled in by hand is
select_commit's ``DIV_BY_MUL`` (``device.type == "cuda"``), set to True.

``python tests/test_triton_compile.py`` runs the compile worker standalone and prints the table
(registers, spills, shared memory) of every compiled kernel.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# arch -> max dynamic shared memory per block in bytes (the opt-in limit; Triton raises OutOfResources
# at load time past it, so exceeding it here means the launch fails on that GPU).
TARGETS = {90: 232448, 80: 166912}

# Candidate attention launch shapes: (dtype, head_dim, k, group, num_splits). BLOCK_M is
# min(128, max(16, next_pow2(k * group))): (4, 4) -> 16, (8, 4) -> 32, (10, 4) -> 64, (40, 8) -> 128
# (three M blocks); the policy's plain decode step (k = 1: n_cand == 1 and, for MHA, group == 1 become
# constexprs, as does num_splits == 1) is added for a few head dims.
_ROWS = {16: (4, 4), 32: (8, 4), 64: (10, 4), 128: (40, 8)}
_DECODE = [("float16", 64, 1, 1, 1), ("bfloat16", 128, 1, 4, 1), ("float32", 128, 1, 4, 1)]
# ARGS_FAST_COMPILE_FULL=1: every dtype x head dim {16..256} x BLOCK_M, on every target (~4-5 min of
# CPU here). Default (~1.5 min): every BLOCK_M for bf16 at D = 64/128/256, fp32 at D = 64/128 and fp16
# at D = 128 (its codegen is bf16's); the BLOCK_M extremes (16, 128) for fp32 at D = 256 and for bf16
# and fp32 at D = 16/32; sm_80 only for the configs with the most shared memory (its limit is lower),
# as the fp32 ones are slow to compile (ptxas spills heavily).
FULL = os.environ.get("ARGS_FAST_COMPILE_FULL") == "1"
if FULL:
    CA_CONFIGS = [(dt, dim, *_ROWS[bm], 4) for dt in ("float16", "bfloat16", "float32")
                  for dim in (16, 32, 64, 128, 256) for bm in _ROWS] + _DECODE
else:
    CA_CONFIGS = ([(dt, dim, *_ROWS[bm], 4) for dt, dim in (("bfloat16", 64), ("bfloat16", 128), ("bfloat16", 256),
                                                            ("float16", 128), ("float32", 64), ("float32", 128))
                   for bm in _ROWS]
                  + [("float32", 256, *_ROWS[bm], 4) for bm in (16, 128)]
                  + [(dt, dim, *_ROWS[bm], 4) for dt in ("bfloat16", "float32") for dim in (16, 32)
                     for bm in (16, 128)]
                  + _DECODE)
# Compiled for sm_80 as well (all of them with ARGS_FAST_COMPILE_FULL=1).
CA_SM80 = {("bfloat16", 128, 40, 8, 4), ("bfloat16", 256, 10, 4, 4), ("bfloat16", 256, 40, 8, 4),
           ("float32", 128, 4, 4, 4), ("float32", 128, 40, 8, 4), ("float16", 64, 1, 1, 1)}

# select_commit launches: (logits dtype, rewards dtype, k, stochastic, n_eos, cache dtype, head_dim).
SC_CONFIGS = [
    ("float32", "float32", 1, False, 0, "bfloat16", 64),
    ("float32", "bfloat16", 10, False, 2, "float16", 128),
    ("float32", "float32", 10, True, 1, "bfloat16", 128),
    ("float16", "float32", 40, True, 0, "float32", 256),
    ("bfloat16", "float16", 64, True, 3, "bfloat16", 16),
]


def ca_id(cfg):
    dtype, dim, k, group, splits = cfg
    return f"{dtype}-D{dim}-k{k}-g{group}-s{splits}"


def sc_id(cfg):
    logits, rewards, k, stochastic, n_eos, cache, dim = cfg
    return f"{logits}-{rewards}-k{k}-{'stoch' if stochastic else 'greedy'}-eos{n_eos}-{cache}-D{dim}"


# ------------------------------------------------------------------------------------------ worker
def _ptxas_stats(log: str) -> dict:
    import re
    stats = {}
    for key, pattern in (("regs", r"Used (\d+) registers"), ("spill_stores", r"(\d+) bytes spill stores"),
                         ("spill_loads", r"(\d+) bytes spill loads"), ("stack", r"(\d+) bytes stack frame")):
        m = re.search(pattern, log)
        stats[key] = int(m.group(1)) if m else None
    return stats


class _Recorder:
    """Stands in for a JITFunction inside ``_launch``: ``kernel[grid](*args, **kw)`` is recorded."""

    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.fn, args, kwargs))


def _record(module, names, launch, *args):
    calls = []
    saved = {n: getattr(module, n) for n in names}
    try:
        for n in names:
            setattr(module, n, _Recorder(saved[n], calls))
        launch(*args)
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)
    return calls


def _compile(fn, args, kwargs, arch):
    """The JIT's own path (JITFunction.run -> _pack_args -> _do_compile) for an explicit target."""
    import contextlib
    import io
    import time

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or triton.knobs.runtime.debug
    kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = triton.knobs.compilation.fpsan_homomorphic_casts
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):   # TRITON_DUMP_PTXAS_LOG=1 prints ptxas -v here
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
    seconds = time.perf_counter() - t0
    md = kernel.metadata
    cubin = kernel.asm.get("cubin")
    info = {"cubin_bytes": len(cubin) if cubin else 0, "shared": md.shared, "num_warps": md.num_warps,
            "num_stages": md.num_stages, "seconds": round(seconds, 2), **_ptxas_stats(log.getvalue()),
            "constexprs": {fn.arg_names[p[0]]: (v if isinstance(v, (int, float, str, bool)) else str(v))
                           for p, v in constexprs.items()}}
    return info


def _ca_launches(ca, torch, cfg):
    dtype, dim, k, group, splits = cfg
    dtype = getattr(torch, dtype)
    batch, hkv, slots, layers = 2, 2, 64 + k, 3
    hq = hkv * group
    # as the static runner passes them: q is (B, T, Hq, D) storage seen as (B, Hq, T, D); the caches
    # are one layer of (layers, B, Hkv, S, D); the prefix window is int64.
    q = torch.zeros(batch, k, hq, dim, dtype=dtype).transpose(1, 2)
    k_cache = torch.zeros(layers, batch, hkv, slots, dim, dtype=dtype)[1]
    v_cache = torch.zeros(layers, batch, hkv, slots, dim, dtype=dtype)[1]
    start = torch.zeros(batch, dtype=torch.long)
    end = torch.full((batch,), 8, dtype=torch.long)
    return _record(ca, ("_prefix_split_kernel", "_combine_kernel"), ca._launch,
                   q, k_cache, v_cache, start, end, dim ** -0.5, splits)


def _sc_launches(sc, torch, cfg):
    logits_dt, rewards_dt, k, stochastic, n_eos, cache_dt, dim = cfg
    batch, layers, hkv, slots = 2, 3, 2, 64 + k
    calls = _record(
        sc, ("_select_kernel", "_commit_kernel"), sc._launch,
        torch.zeros(batch, k, dtype=getattr(torch, logits_dt)), torch.zeros(batch, k, dtype=torch.long),
        torch.zeros(batch, k, dtype=getattr(torch, rewards_dt)),
        torch.full((batch, k), 0.5) if stochastic else None, 1.5, 0.7, torch.zeros(batch, dtype=torch.bool),
        torch.arange(n_eos, dtype=torch.long) if n_eos else None, 0,
        torch.zeros(layers, batch, hkv, slots, dim, dtype=getattr(torch, cache_dt)),
        torch.zeros(layers, batch, hkv, slots, dim, dtype=getattr(torch, cache_dt)),
        torch.full((batch,), 8, dtype=torch.long))
    for fn, _, kwargs in calls:
        if "DIV_BY_MUL" in kwargs:
            kwargs["DIV_BY_MUL"] = True   # device.type == "cuda" on a GPU; the CPU tensors here say False
    return calls


def worker(out_path: str, archs: list[int]) -> None:
    """Compile every recorded launch for every arch; write {"skip": reason} or the results as JSON."""
    import importlib
    import traceback

    result = {"import_error": None, "results": {}}

    def write():
        Path(out_path).write_text(json.dumps(result, indent=1))

    try:
        import triton
        from triton.backends import backends
        from triton.backends.nvidia.compiler import get_ptxas
        if "nvidia" not in backends:
            raise RuntimeError("Triton has no NVIDIA backend")
        for arch in archs:   # sm_90+ and older targets use different ptxas binaries
            subprocess.run([get_ptxas(arch).path, "--version"], check=True, capture_output=True)
    except Exception as e:   # no Triton / no NVIDIA backend / no runnable ptxas: nothing to check here
        result = {"skip": f"cannot compile for CUDA here: {type(e).__name__}: {e}"}
        return write()
    import torch

    # Importing the kernel modules with the interpreter off is itself part of the check (GPU machines
    # import them that way). If it fails, record it and retry with triton.runtime.interpreter
    # preloaded, so the kernels themselves still get compiled.
    try:
        ca = importlib.import_module("args_fast.engine.kernels.candidate_attention")
        sc = importlib.import_module("args_fast.engine.kernels.select_commit")
    except Exception:
        result["import_error"] = traceback.format_exc(limit=-3)
        importlib.import_module("triton.runtime.interpreter")
        for name in [m for m in sys.modules if m.startswith("args_fast.engine.kernels")]:
            del sys.modules[name]
        ca = importlib.import_module("args_fast.engine.kernels.candidate_attention")
        sc = importlib.import_module("args_fast.engine.kernels.select_commit")

    jobs = [(f"ca/{ca_id(c)}", _ca_launches, ca, c, [a for a in archs if a == 90 or FULL or c in CA_SM80])
            for c in CA_CONFIGS]
    jobs += [(f"sc/{sc_id(c)}", _sc_launches, sc, c, archs) for c in SC_CONFIGS]
    for key, launches, module, cfg, job_archs in jobs:
        try:
            calls = launches(module, torch, cfg)
        except Exception:
            result["results"][key] = {"error": "recording the launch failed:\n" + traceback.format_exc(limit=-4)}
            continue
        entry = result["results"][key] = {}
        for fn, args, kwargs in calls:
            for arch in job_archs:
                try:
                    info = _compile(fn, args, kwargs, arch)
                except Exception as e:
                    info = {"error": f"{type(e).__name__}: {e}"[-4000:]}
                entry[f"{fn.__name__}/sm_{arch}"] = info
        write()   # partial results survive a timeout
    write()


# --------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton_compile")
    out = tmp / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp / "cache"),   # a fresh cache: every kernel really compiles
               TRITON_DUMP_PTXAS_LOG="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    archs = ",".join(str(a) for a in TARGETS)
    try:
        proc = subprocess.run([sys.executable, __file__, str(out), archs], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800 if FULL else 600)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"compile worker timed out after {e.timeout} s; partial results in {out}")
    if not out.exists():
        pytest.fail(f"compile worker died (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    data = json.loads(out.read_text())
    if "skip" in data:
        pytest.skip(data["skip"])
    if proc.returncode:
        pytest.fail(f"compile worker failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    print("\n" + format_table(data))
    return data


def _check_entry(compiled, key):
    entry = compiled["results"].get(key)
    assert entry is not None, f"{key} was not compiled (worker stopped early?)"
    assert "error" not in entry, f"{key}: {entry['error']}"
    assert entry, f"{key}: _launch launched no kernel"
    failures = []
    for name, info in entry.items():
        arch = int(name.rsplit("sm_", 1)[1])
        if "error" in info:
            failures.append(f"{name}: {info['error']}")
        elif not info["cubin_bytes"]:
            failures.append(f"{name}: no cubin produced")
        elif info["shared"] > TARGETS[arch]:
            failures.append(f"{name}: needs {info['shared']} B of shared memory, sm_{arch} allows {TARGETS[arch]}"
                            f" (constexprs {info['constexprs']}, num_stages {info['num_stages']})")
    assert not failures, f"{key}:\n" + "\n".join(failures)


def test_kernel_modules_import_without_interpreter(compiled):
    """GPU machines import the kernels with TRITON_INTERPRET unset."""
    assert compiled["import_error"] is None, compiled["import_error"]


@pytest.mark.parametrize("cfg", CA_CONFIGS, ids=ca_id)
def test_candidate_attention_compiles(compiled, cfg):
    _check_entry(compiled, f"ca/{ca_id(cfg)}")


@pytest.mark.parametrize("cfg", SC_CONFIGS, ids=sc_id)
def test_select_commit_compiles(compiled, cfg):
    _check_entry(compiled, f"sc/{sc_id(cfg)}")


def format_table(data) -> str:
    lines = [f"{'config':52} {'kernel/arch':30} {'warps':>5} {'regs':>4} {'spill st/ld':>11} {'shared':>7}"]
    for key, entry in data["results"].items():
        if "error" in entry:
            lines.append(f"{key:52} ERROR")
            continue
        for name, info in entry.items():
            if "error" in info:
                lines.append(f"{key:52} {name:30} ERROR {info['error'].splitlines()[0][:80]}")
            else:
                lines.append(f"{key:52} {name:30} {info['num_warps']:>5} {info['regs']!s:>4} "
                             f"{info['spill_stores']!s:>5}/{info['spill_loads']!s:<5} {info['shared']:>7}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] not in ("-h", "--help"):
        worker(sys.argv[1], [int(a) for a in (sys.argv[2] if len(sys.argv) > 2 else "90").split(",")])
    else:   # standalone: compile everything and print the table
        import tempfile
        if os.environ.get("TRITON_INTERPRET"):
            sys.exit("unset TRITON_INTERPRET first")
        os.environ.setdefault("TRITON_DUMP_PTXAS_LOG", "1")
        with tempfile.TemporaryDirectory() as tmp:
            worker(f"{tmp}/r.json", list(TARGETS))
            data = json.loads(Path(f"{tmp}/r.json").read_text())
        print(data.get("skip") or (data["import_error"] or "") + format_table(data))
