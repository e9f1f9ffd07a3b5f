"""A job killed mid-write (SIGTERM like a scheduler's stop, SIGKILL like the OOM killer) never costs finished data:
no partial file under the final name, the previous output intact, and a rerun that works."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voltron.policy.config import load_bc_config
from voltron.policy.train import train_policy

# Subprocess and end-to-end runs: `make test` runs them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def voltron(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "VOLTRON_DEBUG": "", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.Popen(
        [sys.executable, "-m", "voltron.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(child: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        _, err = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
    return child.returncode, err.decode()


def kill_once(child: subprocess.Popen, started, sig: int, what: str) -> tuple[int, str]:
    """Send `sig` once `started()` is true (the job is mid-write), and wait for the child to end."""
    deadline = time.monotonic() + 180
    while not started():
        if child.poll() is not None:
            return finish(child)
        assert time.monotonic() < deadline, f"{what} never started writing"
        time.sleep(0.05)
    child.send_signal(sig)
    return finish(child, timeout=60)


def collect_args(out: Path, episodes: int, *extra: str) -> list[str]:
    size = ["--image-size", "32", "--no-progress"]
    return ["sim", "collect", "--task", "reach", "--episodes", str(episodes), "--out", str(out), *size, *extra]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_collect_keeps_the_previous_demos_and_reruns(sig, tmp_path):
    out = tmp_path / "demos" / "reach.hdf5"
    code, err = finish(voltron(collect_args(out, 1), tmp_path))
    assert code == 0, err[-2000:]
    before = digest(out)
    partials = lambda: list(out.parent.glob(".reach.hdf5.*.partial"))  # noqa: E731

    def mid_write() -> bool:  # the temporary file appears with the first demo; a few more follow within 0.5 s
        if not partials():
            return False
        time.sleep(0.5)
        return True

    child = voltron(collect_args(out, 500, "--overwrite"), tmp_path)
    code, err = kill_once(child, mid_write, sig, "sim collect")
    if sig == signal.SIGTERM:  # handled like Ctrl-C: the temporary file is removed on the way out
        assert code == 128 + signal.SIGTERM and err.strip().splitlines()[-1] == "terminated", err[-2000:]
        assert "Traceback" not in err and not partials()
    else:  # nothing runs on SIGKILL: the temporary file stays, under its own name, until the next write
        assert code == -signal.SIGKILL and len(partials()) == 1
    assert digest(out) == before  # the demos already there are untouched

    refused, err = finish(voltron(collect_args(out, 1), tmp_path))
    assert refused == 2 and "--overwrite" in err and digest(out) == before
    code, err = finish(voltron(collect_args(out, 1, "--overwrite", "--seed", "1"), tmp_path))
    assert code == 0, err[-2000:]
    assert digest(out) != before and not partials()


@pytest.fixture()
def demos(tmp_path, make_demos) -> Path:
    return make_demos(tmp_path / "demos.hdf5")


def test_sigterm_during_train_policy_overwrite_keeps_the_previous_run(demos, tmp_path):
    run = tmp_path / "run"
    first = load_bc_config(None, ["--policy.encoder=none", "--train.steps=4", "--train.checkpoint_every=2"])
    train_policy(first, demos, run, progress=False)
    (run / "eval").mkdir()
    (run / "eval" / "notes.txt").write_text("not train-policy's to delete")
    before = {p.relative_to(run): digest(p) for p in run.rglob("*") if p.is_file()}
    assert {Path("metrics.jsonl"), Path("model.safetensors"), Path("checkpoints/step_000002.safetensors")} <= set(
        before
    )

    args = ["train-policy", "--demos", str(demos), "--encoder", "none", "--out", str(run), "--no-progress"]
    staged = lambda: [p for p in tmp_path.glob(".run.*.partial") if (p / "metrics.jsonl").is_file()]  # noqa: E731
    long_run = [*args, "--overwrite", "--train.steps=1000000", "--train.log_every=1", "--train.checkpoint_every=0"]
    code, err = kill_once(voltron(long_run, tmp_path), staged, signal.SIGTERM, "train-policy")
    assert code == 128 + signal.SIGTERM and err.strip().splitlines()[-1] == "terminated", err[-2000:]
    assert {p.relative_to(run): digest(p) for p in run.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".run.*"))  # the staging folder went with the run

    code, err = finish(voltron([*args, "--train.steps=3", "--train.log_every=1"], tmp_path))
    assert code == 2 and "already holds a policy" in err and "--overwrite" in err
    code, err = finish(voltron([*args, "--overwrite", "--train.steps=3", "--train.log_every=1"], tmp_path))
    assert code == 0, err[-2000:]
    after = {p.relative_to(run): digest(p) for p in run.rglob("*") if p.is_file()}
    assert after[Path("eval/notes.txt")] == before[Path("eval/notes.txt")]  # files the run does not own stay
    assert after[Path("model.safetensors")] != before[Path("model.safetensors")]
    assert not (run / "checkpoints").exists()  # the old run's snapshots do not pass for the new run's
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3 and not list(tmp_path.glob(".run.*"))


def test_sigterm_during_eval_resumes_to_the_same_episodes(tmp_path):
    from voltron.sim.collect import collect

    demos, _ = collect("reach", 2, tmp_path / "reach.hdf5", image_size=32, valid_fraction=0.0, progress=False)
    policy = tmp_path / "policy"
    train_policy(load_bc_config(None, ["--policy.encoder=none", "--train.steps=2"]), demos, policy, progress=False)
    args = ["eval", "--policy", str(policy), "--task", "reach", "--episodes", "4", "--num-envs", "1"]
    args += ["--horizon", "15", "--videos", "0", "--no-progress"]
    log = tmp_path / "killed" / "episodes.jsonl"
    started = lambda: log.is_file() and len(log.read_text().splitlines()) >= 3  # noqa: E731  settings + 2 episodes
    code, err = kill_once(
        voltron([*args, "--out", str(tmp_path / "killed")], tmp_path), started, signal.SIGTERM, "eval"
    )
    assert code == 128 + signal.SIGTERM and err.strip().splitlines()[-1] == "terminated", err[-2000:]
    assert "Traceback" not in err and 3 <= len(log.read_text().splitlines()) < 5, "the signal should land mid-eval"
    kept = [json.loads(line) for line in log.read_text().splitlines()[1:]]  # every line whole: strict JSON
    code, err = finish(voltron([*args, "--out", str(tmp_path / "killed")], tmp_path))  # resumes (see test_policy)
    assert code == 0, err[-2000:]
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())[0]["per_episode"]
    assert [e["episode"] for e in resumed] == [0, 1, 2, 3]
    assert kept == resumed[: len(kept)]
