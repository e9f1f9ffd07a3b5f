"""`voltron demo --quick`: every stage runs for real at toy sizes, every artefact exists, and every number in the
report comes from the run's own files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Subprocess and end-to-end runs: `make test` runs them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    cmd = [sys.executable, "-m", "voltron.cli", "demo", "--quick", "--out", str(out), "--no-progress"]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_quick_demo_writes_every_artefact(quick_demo):
    out, _ = quick_demo
    tasks = ["assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer"]
    assert (out / "corpus" / "labels" / "train.json").is_file() and list((out / "corpus" / "videos").glob("*.webm"))
    assert (out / "store" / "report.json").is_file()
    assert (out / "pretrain" / "config.json").is_file() and (out / "pretrain" / "model.safetensors").is_file()
    for task in tasks:
        assert (out / "suite" / "demos" / f"{task}-3x64px-corner3.hdf5").is_file()
        for label in ("state_oracle", "proprio_only", "V-Cond__pretrained_here_", "V-Cond__random_init_"):
            run = out / "suite" / "policies" / label / task / "seed0"
            assert (run / "model.safetensors").is_file() and (run / "metrics.jsonl").is_file()
            assert (run / "eval" / "results.json").is_file() and (run / "eval" / "eval_info.json").is_file()
            assert (run / "eval" / "step_000020" / "results.json").is_file()  # the half-way checkpoint
            assert (run / "eval" / "episode_000.mp4").is_file() == label.startswith("V-Cond")  # low-dim: no frames
    for name in (
        "REPORT.md", "demo_config.json", "suite/results.json", "suite/results.md", "suite/success.png",
        "suite/learning_curve.png",
    ):  # fmt: skip
        assert (out / name).is_file(), name


def test_report_numbers_come_from_the_run(quick_demo):
    out, stdout = quick_demo
    report = (out / "REPORT.md").read_text()
    results = json.loads((out / "suite" / "results.json").read_text())
    assert results["row_order"][:2] == ["state oracle", "proprio only"]  # the reference rows come first
    assert set(results["margins_vs_proprio_only"]) == {"V-Cond (pretrained here)", "V-Cond (random init)"}
    assert results["protocol"]["camera"] == "corner3" and results["protocol"]["steps"] == 40
    assert any(report.startswith(v, 23) for v in ("**Pretraining helped", "**Pretraining hurt", "**No detectable"))
    for label, cells in results["rows"].items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
        shown = re.findall(r"(\d+)% \((\d+)%-(\d+)%\)", row)
        expected = [cells[t] for t in [*results["tasks"], "mean"]]
        assert [tuple(int(x) for x in s) for s in shown] == [
            (round(100 * c["rate"]), round(100 * c["ci_low"]), round(100 * c["ci_high"])) for c in expected
        ]
        # each task cell pools the per-policy results.json files written by evaluation
        for task in results["tasks"]:
            runs = results["runs"][label][task]
            assert cells[task]["n"] == sum(r["episodes"] for r in runs)
            assert cells[task]["rate"] == pytest.approx(sum(r["successes"] for r in runs) / cells[task]["n"])
    metrics = [json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines() if line]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" in report
    assert "report:" in stdout and str(out / "REPORT.md") in stdout


def test_second_run_reuses_finished_stages(quick_demo):
    out, _ = quick_demo
    cmd = [sys.executable, "-m", "voltron.cli", "demo", "--quick", "--out", str(out), "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("1/6 sim corpus (cached)", "3/6 pretrain V-Cond (cached)", "4/6 collect demonstrations (cached)"):
        assert stage in result.stdout
    assert "nothing to do" in result.stdout  # preprocess is a no-op
