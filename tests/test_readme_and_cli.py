"""The README's Python example runs as written, and the `voltron` CLI's model commands work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_an_example():
    assert readme_python_blocks(), "README.md must carry a ```python example"


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = readme_python_blocks()[index]
    exec(compile(code, f"README.md example {index}", "exec"), {"__name__": "__readme__"})


def voltron_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voltron.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT / "tests"
    )


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_models_command_lists_every_model_with_its_contract():
    import voltron

    result = voltron_cli("models")
    assert result.returncode == 0, result.stderr
    for name in voltron.available_models():
        assert re.search(rf"^{re.escape(name)}\s+\d+\.\d+M", result.stdout, flags=re.M), name
    assert "(B, 2, 3, 224, 224)" in result.stdout and "lang: list[str]" in result.stdout


@pytest.mark.slow  # over ~3.5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_convert_upstream_reports_a_missing_file(tmp_path):
    result = voltron_cli("convert-upstream", str(tmp_path / "v-cond.pt"), str(tmp_path / "c.json"), str(tmp_path / "o"))
    assert result.returncode != 0
    assert "c.json: upstream model config not found" in result.stderr
