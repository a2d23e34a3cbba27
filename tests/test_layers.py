"""The package's layers: no import circles (imports inside functions included), no module importing a
layer above its own, and ``import args_fast`` loading no study module."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "args_fast"

# bottom to top; a module belongs to the longest prefix listed
LAYERS = {
    "args_fast.validation": 0, "args_fast.hf": 0, "args_fast._moved": 0, "args_fast._C": 0,
    "args_fast.rewards": 1,
    "args_fast.engine": 2,
    "args_fast": 3, "args_fast.decoding": 3, "args_fast.integrations": 3, "args_fast.loading": 3,
    "args_fast.default_models": 3,
    "args_fast.data": 4,
    "args_fast.training": 5,
    "args_fast.evaluation": 6,
    "args_fast.cli": 7, "args_fast.__main__": 7,
}
STUDIES = ("args_fast.data", "args_fast.training", "args_fast.evaluation", "args_fast.cli", "matplotlib")


def layer_of(module: str) -> int:
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict) -> set[str]:
    """Every args_fast module ``name`` imports, at any depth of its code (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("args_fast")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("args_fast"):
                continue
            for alias in node.names:   # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known or sub == "args_fast._C" else target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_circle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    circle = find_circle(graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def test_the_checks_catch_a_circle_and_an_upward_import():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None
    assert layer_of("args_fast.engine.backends.registry") < layer_of("args_fast.decoding.decoder")
    assert layer_of("args_fast.cli.generate") > layer_of("args_fast.evaluation.run")


def test_import_args_fast_loads_no_study_module():
    code = ("import sys, args_fast; print('\\n'.join(m for m in sys.modules if m.startswith(%r)))" % (STUDIES,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"import args_fast loaded study modules: {out.split()}"


def test_the_decoder_class_stays_small():
    import inspect

    from args_fast.decoding.decoder import ARGSDecoder
    lines = len(inspect.getsourcelines(ARGSDecoder)[0])
    assert lines <= 250, f"ARGSDecoder has {lines} lines: move checks or classification out (validation, rewards/kinds)"


def test_old_module_paths_still_import_with_a_deprecation_warning():
    import importlib
    import warnings

    import args_fast
    from args_fast import _moved
    for old in _moved.MOVED:
        sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head = importlib.import_module("args_fast.reward_head")
        registry = importlib.import_module("args_fast.backends.registry")
        objectives = importlib.import_module("args_fast.objectives")
        decoder = importlib.import_module("args_fast.decoder")
    assert head.RewardHead is args_fast.RewardHead
    assert registry is importlib.import_module("args_fast.engine.backends.registry")
    assert objectives.calibrate is args_fast.calibrate and objectives.NormalizedReward is args_fast.NormalizedReward
    assert decoder.ARGSDecoder is args_fast.ARGSDecoder and decoder.encode_prompts is args_fast.encode_prompts
    moved = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any("args_fast.reward_head moved to args_fast.rewards.head" in m for m in moved), moved
    for old in _moved.MOVED:   # every entry points somewhere that imports
        target = _moved.new_path(old)
        for new in (target,) if isinstance(target, str) else target:
            importlib.import_module(new)


def test_the_public_names_are_there():
    import args_fast
    from args_fast.default_models import load_default_policy, load_default_reward  # noqa: F401
    for name in ("generate", "ARGSDecoder", "RewardHead", "ImplicitReward", "TokenReward", "NormalizedReward",
                 "calibrate", "store_normalization", "custom_generate", "encode_prompts"):
        assert hasattr(args_fast, name), name
