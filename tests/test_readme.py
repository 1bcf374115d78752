"""Every ```python block of the README runs, in order, in one namespace (so the docs cannot rot)."""

from __future__ import annotations

import os
import re

from tests.conftest import REPO_ROOT


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = python_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md:block{i}", "exec"), namespace)
        except Exception as exc:  # name the block that broke
            raise AssertionError(f"README python block {i} failed:\n{block}") from exc


def test_readme_first_lines_are_the_two_fresh_machine_commands():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    head = "\n".join(lines[:6])
    assert "pip install torch==2.13.0" in head and "scripts/run_translation.py" in head and "pytest" in head
    assert os.access(REPO_ROOT / ".ci" / "run", os.X_OK)
