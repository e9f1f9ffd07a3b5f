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

from voltron.config import closest_key, parse_config
from voltron.errors import UserError
from voltron.models.registry import build_model
from voltron.policy.config import BCConfig, load_bc_config
from voltron.policy.train import finite_or_none, load_split
from voltron.policy.train import train_policy as train_policy_api

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
    damage_demos(root)
    policy = root / "policy"  # a real (low-dim, 2-step) policy: train-policy must not overwrite it unasked
    summary = train_policy_api(load_bc_config(None, ["--policy.encoder=none", "--train.steps=2"]), root / "demos.hdf5",
                               policy, progress=False)  # fmt: skip
    assert summary["valid_episodes"] == 1
    (root / "nostats").mkdir()
    meta = json.loads((policy / "config.json").read_text())
    del meta["action_stats"]
    (root / "nostats" / "config.json").write_text(json.dumps(meta))
    (root / "nostats" / "model.safetensors").write_bytes((policy / "model.safetensors").read_bytes())
    return root


def damage_demos(root: Path) -> None:
    """Copies of demos.hdf5 (episode demo_1 in mask/train, demo_0 in mask/valid) with one thing wrong each."""
    import h5py

    with h5py.File(root / "demos.hdf5") as demos:
        valid = demos["mask/valid"][()][0].decode()
        train = demos["mask/train"][()][0].decode()
    assert (train, valid) == ("demo_1", "demo_0")

    def copy(name: str) -> h5py.File:
        (root / name).write_bytes((root / "demos.hdf5").read_bytes())
        return h5py.File(root / name, "a")

    with copy("mismatch.hdf5") as demos:  # a valid-split episode with one action more than observations
        del demos[f"data/{valid}/actions"]
        demos[f"data/{valid}/actions"] = np.zeros((5, 3), np.float32)
    for name, demo in (("nan-train.hdf5", train), ("nan-valid.hdf5", valid)):
        with copy(name) as demos:
            demos[f"data/{demo}/obs/proprio"][2, 1] = np.nan
    with copy("noimages.hdf5") as demos:  # demos from a source without cameras
        for demo in ("demo_0", "demo_1"):
            del demos[f"data/{demo}/obs/cam_image"]


def train_policy(encoder: str, *extra: str, demos: str = "demos.hdf5", out: str = "run") -> list[str]:
    return ["train-policy", "--demos", demos, "--encoder", encoder, "--out", out, "--no-progress", *extra]


def collect(*extra: str, out: str = "new.hdf5") -> list[str]:
    return ["sim", "collect", "--task", "reach", "--episodes", "1", "--out", out, "--no-progress", *extra]


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
    "the old --set form": (
        ["ros", "bag2demos", "notabag.bag", "--robot", ROBOT, "--out", "out.hdf5", "--set", "safety.watchdog_ms=3"],
        ["--set safety.watchdog_ms=3 is no longer accepted", "--safety.watchdog_ms=3"],
    ),
    "unknown robot config key": (
        ["ros", "bag2demos", "notabag.bag", "--robot", ROBOT, "--out", "out.hdf5", "--safety.watchdogms=3"],
        ["'safety.watchdogms'", "did you mean 'safety.watchdog_ms'"],
    ),
    # Silent wrong results, now refused
    "valid-split episode with obs and actions of different lengths": (
        train_policy("none", demos="mismatch.hdf5"),
        ["mismatch.hdf5", "/data/demo_0/actions", "expected 4 steps"],
    ),
    "NaN in a train-split episode": (
        train_policy("none", demos="nan-train.hdf5"),
        ["nan-train.hdf5", "'train' split episode 0", "non-finite proprio", "step 2"],
    ),
    "NaN in a valid-split episode": (
        train_policy("none", demos="nan-valid.hdf5"),
        ["nan-valid.hdf5", "'valid' split episode 0", "non-finite proprio", "step 2"],
    ),
    "train-policy zero steps": (train_policy("none", "--train.steps=0"), ["train.steps=0", "expected at least 1"]),
    # Data that would have been lost or overwritten
    "train-policy into a run that holds a policy": (
        train_policy("none", out="policy"),
        ["policy", "already holds a policy", "--overwrite"],
    ),
    "sim collect onto existing demos": (collect(out="out.hdf5"), ["out.hdf5", "already exists", "--overwrite"]),
    # Misleading messages
    "eval negative horizon": (
        ["eval", "--policy", "policy", "--task", "reach", "--horizon", "-1"],
        ["horizon=-1", "expected at least 1"],
    ),
    "policy config.json without action_stats": (
        ["eval", "--policy", "nostats", "--task", "reach"],
        ["nostats/config.json", "missing key 'action_stats'"],
    ),
    "image policy on demos without images": (
        train_policy("r-mvp-tiny", demos="noimages.hdf5"),
        ["noimages.hdf5", "no camera images", "--policy.encoder=none"],
    ),
    "sim collect zero image size": (collect("--image-size", "0"), ["image_size=0", "expected a positive"]),
    "pretrain without its data": (
        ["pretrain", "--config", "v-cond", "--data.root=no-data"],
        ["data.root='no-data'", "no such directory", "voltron preprocess"],
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


@pytest.mark.slow  # a subprocess or end-to-end run: `make test` runs it, `make test-fast` leaves it out
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


@pytest.mark.slow  # a subprocess or end-to-end run: `make test` runs it, `make test-fast` leaves it out
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


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_pretrain_names_the_offline_language_model_before_loading_anything(workspace, tmp_path):
    """The README's paper config on a fresh install: distilbert-base-uncased is not on disk, and nothing is
    downloaded, so the run stops at once and says what to pass instead."""
    (tmp_path / "store").mkdir()  # exists, so the language model is the first thing missing
    empty_cache = {"HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1"}
    args = ["pretrain", "--config", "v-cond", f"--data.root={tmp_path / 'store'}"]
    result = run_voltron(args, workspace, **empty_cache)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    for word in ("'distilbert-base-uncased'", "not available offline", "--model.language_model=minilm"):
        assert word in lines[0], lines[0]
    assert not (workspace / "runs").exists()


def test_packaged_configs_list_show_and_resolve_by_name(workspace):
    from voltron.packaged_configs import packaged_configs, resolve_config_path
    from voltron.pretrain.config import load_config

    listing = run_voltron(["config", "list"], workspace)
    assert listing.returncode == 0 and "pretrain/v-cond " in listing.stdout and "robots/franka" in listing.stdout
    shown = run_voltron(["config", "show", "v-cond"], workspace)
    assert shown.returncode == 0 and shown.stdout == (ROOT / "configs" / "pretrain" / "v-cond.yaml").read_text()
    assert set(packaged_configs()) >= {"pretrain/v-cond", "pretrain/demo", "robots/generic"}
    assert resolve_config_path("pretrain/v-dual") == resolve_config_path("v-dual")
    by_name, by_path = load_config("v-cond"), load_config(ROOT / "configs" / "pretrain" / "v-cond.yaml")
    assert by_name == by_path and by_name.model.language_model == "distilbert-base-uncased"  # the paper's value
    missing = run_voltron(["config", "show", "v-nope"], workspace)
    assert missing.returncode == 2 and "voltron config list" in missing.stderr


def test_a_missing_valid_split_is_only_a_warning(workspace, tmp_path):
    import h5py

    demos = tmp_path / "train-only.hdf5"
    demos.write_bytes((workspace / "demos.hdf5").read_bytes())
    with h5py.File(demos, "a") as handle:
        del handle["mask/valid"]
    with pytest.warns(UserWarning, match=r"train-only.hdf5: no 'valid' split.*training without validation"):
        assert load_split(demos, "valid", required=False) == []
    with pytest.raises(KeyError, match="unknown split 'valid'"):
        load_split(demos, "valid", required=True)
    with pytest.raises(KeyError, match=r"mismatch.hdf5: /data/demo_0/actions has shape \(5, 3\)"):
        load_split(workspace / "mismatch.hdf5", "valid", required=False)


def test_low_dim_policy_trains_on_demos_without_images_and_metrics_are_strict_json(workspace, tmp_path):
    config = load_bc_config(None, ["--policy.encoder=none", "--train.steps=3", "--train.log_every=1"])
    train_policy_api(config, workspace / "noimages.hdf5", tmp_path / "run", progress=False)
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.jsonl"))
    assert finite_or_none({"loss": float("nan"), "lr": float("inf"), "step": 3}) == {
        "loss": None,
        "lr": None,
        "step": 3,
    }


def test_a_missing_optional_package_is_one_line(workspace, monkeypatch, capsys):
    """A command whose extra is not installed (here the kitchen's gymnasium-robotics) says which package and how to
    install it, in one line, and writes nothing."""
    from voltron.cli import main

    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # import gymnasium_robotics now fails
    monkeypatch.setenv("VOLTRON_DEBUG", "")
    before = snapshot(workspace)
    out = workspace / "kitchen.hdf5"
    code = main(["sim", "collect", "--task", "kitchen-micro-open", "--episodes", "1", "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "gymnasium-robotics" in lines[0] and "pip install" in lines[0], lines[0]
    assert snapshot(workspace) == before
