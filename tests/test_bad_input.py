"""Bad input never costs a user a traceback, a silent wrong result or data: the real `voltron` command prints one
line naming the file, key and value, exits 2, and leaves files on disk as they were."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from voltron.cli import closest_key, parse_config
from voltron.errors import UserError
from voltron.models.registry import build_model
from voltron.policy.config import BCConfig

ROOT = Path(__file__).resolve().parents[1]
ROBOT = str(ROOT / "configs" / "robots" / "generic.yaml")
MALFORMED_YAML = "train:\n  steps: [1, 2\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Inputs a user might get wrong: malformed YAML, a file that is not a bag, an encoder whose config.json has a
    string where a number belongs, and real (tiny) demos so that train-policy gets as far as loading the encoder."""
    from voltron.datasets.demos import Episode, write_demos

    root = tmp_path_factory.mktemp("bad-input")
    (root / "malformed.yaml").write_text(MALFORMED_YAML)
    (root / "notabag.bag").write_bytes(b"this is not a ROS bag\n")
    (root / "upstream-config.json").write_text("{}")
    (root / "out.hdf5").write_bytes(b"an existing output the failed command must not touch")
    build_model("r-mvp-tiny", image_size=32).save_pretrained(root / "encoder")
    config = json.loads((root / "encoder" / "config.json").read_text())
    (root / "encoder" / "config.json").write_text(json.dumps({**config, "embed_dim": "big"}))
    frames, zeros = np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 3), np.float32)
    episodes = [Episode({"cam": frames}, zeros, zeros, "open the drawer") for _ in range(2)]
    write_demos(root / "demos.hdf5", episodes, {"env_name": "test"}, valid_fraction=0.5)
    return root


def train_policy(encoder: str, *extra: str) -> list[str]:
    return ["train-policy", "--demos", "demos.hdf5", "--encoder", encoder, "--out", "run", "--no-progress", *extra]


# (command line, words the one-line message must contain); paths are relative to the workspace.
CASES = {
    "train-policy decoding error": (train_policy("r-mvp-tiny", "--train.steps=abc"), ["train.steps", "abc", "int"]),
    "pretrain decoding error": (["pretrain", "--optim.lr=fast"], ["optim.lr", "fast", "float"]),
    "pretrain malformed yaml": (["pretrain", "--config", "malformed.yaml"], ["malformed.yaml", "line 3"]),
    "train-policy malformed yaml": (
        train_policy("r-mvp-tiny", "--config", "malformed.yaml"),
        ["malformed.yaml", "line 3", "YAML"],
    ),
    "ros serve malformed robot yaml": (
        ["ros", "serve", "--policy", "run", "--robot", "malformed.yaml"],
        ["malformed.yaml", "line 3", "YAML"],
    ),
    "ros bag2demos not a bag": (
        ["ros", "bag2demos", "notabag.bag", "--robot", ROBOT, "--out", "out.hdf5"],
        ["notabag.bag", "not a readable ROS bag", "expected"],
    ),
    "encoder config.json type error": (
        train_policy("encoder"),
        ["encoder/config.json", "embed_dim", "'big'", "expected an integer"],
    ),
    "convert-upstream missing checkpoint": (
        ["convert-upstream", "nope.pt", "upstream-config.json", "converted"],
        ["nope.pt", "no such file"],
    ),
    "convert-upstream unknown family": (
        ["convert-upstream", "notabag.bag", "upstream-config.json", "converted"],
        ["notabag.bag", "--family", "v-cond"],
    ),
    "load a missing directory": (train_policy("/nonexistent/dir"), ["/nonexistent/dir", "no such directory"]),
    "unknown override key": (["pretrain", "--optim.lrr=3"], ["'optim.lrr'", "did you mean 'optim.lr'"]),
    "unknown override key (train-policy)": (
        train_policy("r-mvp-tiny", "--train.stepz=3"),
        ["'train.stepz'", "did you mean 'train.steps'"],
    ),
    "unknown robot config key": (
        ["ros", "bag2demos", "notabag.bag", "--robot", ROBOT, "--out", "out.hdf5", "--set", "safety.watchdogms=3"],
        ["'safety.watchdogms'", "did you mean 'safety.watchdog_ms'"],
    ),
}


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def run_voltron(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voltron.cli", *args],
        cwd=cwd,  # also keeps the repo's top-level datasets/ off sys.path
        env={**os.environ, "VOLTRON_DEBUG": "", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, workspace):
    args, words = CASES[case]
    before = snapshot(workspace)
    result = run_voltron(args, workspace)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"{case}: exit {result.returncode}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-2000:]
    assert "error: " in lines[0] and all(word in lines[0] for word in words), lines[0]
    assert snapshot(workspace) == before


def test_voltron_debug_shows_the_traceback(workspace):
    result = run_voltron(["pretrain", "--optim.lr=fast"], workspace, VOLTRON_DEBUG="1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "UserError" in result.stderr


def test_user_error_is_a_value_error_with_one_line():
    error = UserError("not a size\n(see the docs)", source="run/config.json", key="embed_dim", value="big")
    assert isinstance(error, ValueError)
    assert str(error) == "run/config.json: embed_dim='big': not a size (see the docs)"
    assert str(UserError(key="lr", value=None, expected="a number")) == "lr=None; expected a number"


def test_parse_config_suggests_the_closest_key():
    keys = ["optim.lr", "optim.base_lr", "train.steps", "train.batch_size"]
    assert closest_key("optim.lrr", keys) == "optim.lr"
    assert closest_key("batch_size", keys) == "train.batch_size"  # the right leaf in another section
    assert closest_key("zzz", keys) is None
    with pytest.raises(UserError, match=r"unknown config key 'policy.extractr'.*did you mean 'policy.extractor'"):
        parse_config(BCConfig, None, ["--policy.extractr=mean"])
    assert parse_config(BCConfig, None, ["--train.steps=7"]).train.steps == 7


def test_preprocess_refuses_0_255_floats():
    preprocess = build_model("r-mvp-tiny").preprocess  # what voltron.load returns beside the model
    frames = torch.rand(2, 3, 240, 320, generator=torch.Generator().manual_seed(0))
    expected = r"values in \[.*, 25\d.*\]; expected uint8 images \(0-255\) or float images in \[0, 1\]"
    with pytest.raises(UserError, match=expected):
        preprocess(frames * 255)
    with pytest.raises(ValueError, match="expected uint8"):  # NaN is not in [0, 1] either
        preprocess(torch.full((1, 3, 8, 8), float("nan")))
    as_floats = preprocess(frames)
    as_uint8 = preprocess((frames * 255).round().to(torch.uint8))
    assert torch.allclose(as_floats, as_uint8, atol=0.05)
    preprocess((frames * 1.005).clamp(max=1.005))  # resampling overshoot within the tolerance is fine
