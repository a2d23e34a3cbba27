"""args_fast build: the optional compiled extension ``args_fast._C`` (csrc/); the package's metadata,
dependencies and data files are in pyproject.toml.

The extension is built by CMake (CMakeLists.txt) against the torch found in the build environment,
with torch's bundled pybind11 headers, so install with ``pip install --no-build-isolation -e .``
(an isolated build has no torch, and then the extension is skipped). CUDA kernels are compiled when
torch has CUDA and nvcc is found; ``ARGS_FAST_BUILD_CUDA=0/1`` forces the choice and
``ARGS_FAST_CUDA_ARCHS`` (e.g. "90") sets CMAKE_CUDA_ARCHITECTURES. A failed or impossible build
never fails the install: it prints a warning, writes the reason to args_fast/_C_build_error.txt, and
``args_fast.engine.csrc_ops.available()`` then returns False with that reason.
"""
import os
import shutil
import subprocess
import sys
import traceback

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
ERROR_FILE = os.path.join(ROOT, "args_fast", "_C_build_error.txt")


def _want_cuda() -> tuple[bool, str]:
    forced = os.environ.get("ARGS_FAST_BUILD_CUDA")
    if forced in ("0", "1"):
        return forced == "1", f"ARGS_FAST_BUILD_CUDA={forced}"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
    if torch.version.cuda is None:
        return False, "torch has no CUDA"
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc not found"
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"


class CMakeBuild(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # never fail the install: the package works without the extension
            self._warn(f"{type(exc).__name__}: {exc}")

    def build_extension(self, ext):
        if os.path.exists(ERROR_FILE):
            os.remove(ERROR_FILE)
        try:
            import torch  # noqa: F401  (the build needs torch's headers and libraries)
        except ImportError as exc:
            raise RuntimeError(f"torch is not importable in the build environment ({exc}); "
                               "use pip install --no-build-isolation") from exc
        if not shutil.which("cmake"):
            raise RuntimeError("cmake not found on PATH")
        with_cuda, why = _want_cuda()
        out_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        try:
            self._cmake(out_dir, with_cuda)
        except subprocess.CalledProcessError:
            if not with_cuda:
                raise
            print(f"args_fast: CUDA build failed ({why}); retrying CPU only", file=sys.stderr)
            self._cmake(out_dir, False)
            print("\nWARNING: args_fast: the CUDA part of args_fast._C failed to build (see above); "
                  "it has the CPU ops only\n", file=sys.stderr)

    def _cmake(self, out_dir: str, with_cuda: bool):
        build_dir = os.path.join(os.path.abspath(self.build_temp), "cmake-cuda" if with_cuda else "cmake-cpu")
        os.makedirs(build_dir, exist_ok=True)
        args = [f"-DPython_EXECUTABLE={sys.executable}", f"-DARGS_FAST_OUTPUT_DIR={out_dir}",
                f"-DARGS_FAST_WITH_CUDA={'ON' if with_cuda else 'OFF'}", "-DCMAKE_BUILD_TYPE=Release"]
        if shutil.which("ninja"):
            args.append("-GNinja")
        if with_cuda:
            from torch.utils.cpp_extension import CUDA_HOME

            nvcc = shutil.which("nvcc") or os.path.join(CUDA_HOME or "/usr/local/cuda", "bin", "nvcc")
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
            if os.environ.get("ARGS_FAST_CUDA_ARCHS"):
                args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['ARGS_FAST_CUDA_ARCHS']}")
        env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        subprocess.run(["cmake", "-S", ROOT, "-B", build_dir, *args], check=True, env=env)
        subprocess.run(["cmake", "--build", build_dir], check=True, env=env)

    def _warn(self, reason: str):
        msg = f"args_fast: the compiled extension args_fast._C was NOT built: {reason}"
        print(f"\nWARNING: {msg}\n{traceback.format_exc()}", file=sys.stderr)
        with open(ERROR_FILE, "w") as f:
            f.write(msg + "\n")
        for name in os.listdir(os.path.dirname(ERROR_FILE)):  # a stale in-place build must not load
            if name.startswith("_C.") and name.endswith(".so"):
                os.remove(os.path.join(os.path.dirname(ERROR_FILE), name))


# Metadata, dependencies and package data live in pyproject.toml; this file only adds the extension.
setup(
    ext_modules=[Extension("args_fast._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
