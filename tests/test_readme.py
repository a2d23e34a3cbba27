"""The README's Python blocks run as pasted (on the embedded default models), so they stay true."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_a_runnable_example():
    assert python_blocks(), "the README's Use section must have a ```python block"


def test_readme_python_blocks_run(capsys):
    namespace: dict = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)   # noqa: S102 (our own README)
    printed = capsys.readouterr().out
    assert "torch.Size([2," in printed and namespace["out"].rewards.shape[0] == 2
