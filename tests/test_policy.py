"""Policy learning on real sim demonstrations: windows, fitting, select_action, checkpoints, evaluation, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from voltron.datasets.demos import DemoFile, Episode
from voltron.datasets.windows import NormStats, WindowDataset
from voltron.policy.model import load_policy
from voltron.policy.train import train_policy

TASK = "drawer-open"


def test_windows_clamp_at_episode_start_and_index_every_frame():
    episodes = [
        Episode({"cam": np.zeros((n, 8, 8, 3), np.uint8)}, np.arange(n * 2, dtype=np.float32).reshape(n, 2),
                np.full((n, 3), i, np.float32), f"task {i}")
        for i, n in enumerate((3, 4))
    ]  # fmt: skip
    windows = WindowDataset(episodes, history=3)
    assert len(windows) == 7 and windows.camera == "cam"
    assert windows.frame_ids[0].tolist() == [0, 0, 0] and windows.frame_ids[2].tolist() == [0, 1, 2]
    assert windows.frame_ids[3].tolist() == [3, 3, 3] and windows.frame_ids[6].tolist() == [4, 5, 6]
    item = windows[4]
    assert item["proprio"].shape == (3, 2) and item["action"].tolist() == [1, 1, 1] and int(item["episode"]) == 1
    with pytest.raises(KeyError, match="no camera 'wrist'"):
        WindowDataset(episodes, camera="wrist")


def test_norm_stats_round_trip():
    values = np.array([[0.0, -2.0], [1.0, 2.0], [0.5, 0.0]])
    stats = NormStats.from_dict(json.loads(json.dumps(NormStats.compute(values).to_dict())))
    x = torch.tensor(values, dtype=torch.float32)
    unit = stats.to_unit_range(x)
    assert unit.min() == -1 and unit.max() == 1
    assert torch.allclose(stats.from_unit_range(unit), x, atol=1e-6)


def test_policy_fits_the_demos(tiny_policy):
    out, summary = tiny_policy
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0], losses
    assert summary["train_episodes"] == 2 and summary["valid_episodes"] == 1
    assert any("valid_loss" in r for r in records) and summary["final_valid_loss"] is not None


def test_select_action_is_batched_and_in_env_units(tiny_policy, sim_demos):
    out, _ = tiny_policy
    policy = load_policy(out)
    with DemoFile(sim_demos, split="train") as demo_file:
        episode = demo_file[0]
    frames, proprio = (
        episode.images["corner_image" if "corner_image" in episode.images else sorted(episode.images)[0]],
        episode.proprio,
    )
    obs = {"images": {policy.camera: frames[:3]}, "proprio": proprio[:3], "language": [episode.language] * 3}
    actions = policy.select_action(obs)
    assert actions.shape == (3, 4) and actions.dtype == np.float32
    low, high = policy.action_stats.min, policy.action_stats.max
    assert (actions >= low - 1e-5).all() and (actions <= high + 1e-5).all()
    policy.reset()
    single = {"images": {policy.camera: frames[0]}, "proprio": proprio[0], "language": episode.language}
    single = policy.select_action(single)
    assert single.shape == (4,)
    assert np.allclose(single, actions[0], atol=1e-5)
    with pytest.raises(ValueError, match="'proprio' has 5 dims; this policy expects 4"):
        policy.select_action({"images": {policy.camera: frames[:1]}, "proprio": np.zeros((1, 5)), "language": ["x"]})


def test_save_load_round_trip_stores_random_encoders_and_references_trained_ones(
    tiny_policy, sim_demos, tmp_path, bc_config
):
    import voltron.policy

    out, _ = tiny_policy
    first, second = load_policy(out), voltron.policy.load_policy(out)  # the public entry `voltron ros serve` uses
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["policy"]["pretrained"] is False and config["image_size"] == 64
    assert "encoder_config" in config and config["proprio_stats"] and config["action_stats"]
    # a policy on a saved encoder directory references it instead of copying its weights
    encoder_dir = tmp_path / "encoder"
    first.encoder.save_pretrained(encoder_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = bc_config(f"--policy.encoder={encoder_dir}", steps=5, random_encoder=False)
        train_policy(config, sim_demos, tmp_path / "p2", progress=False)
    referenced = load_policy(tmp_path / "p2")
    assert torch.equal(referenced.encoder.patch2embed.proj.weight, first.encoder.patch2embed.proj.weight)
    stored = (out / "model.safetensors").stat().st_size
    assert (tmp_path / "p2" / "model.safetensors").stat().st_size < stored


def test_load_policy_rejects_an_encoder_checkpoint(tmp_path):
    from voltron.models.registry import build_model

    build_model("r-mvp-tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a voltron policy checkpoint"):
        load_policy(tmp_path)


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_eval_writes_every_output(tiny_policy, tmp_path):
    from voltron.datasets.video import load_decord
    from voltron.policy.evaluate import evaluate

    out, _ = tiny_policy
    result = evaluate(
        out, TASK, episodes=2, seed=100, num_envs=1, horizon=12, out_dir=tmp_path, videos=2, progress=False
    )
    assert result.episodes == 2 and 0.0 <= result.success_rate <= 1.0 and result.ci_low <= result.ci_high
    assert {p.name for p in tmp_path.iterdir()} >= {
        "results.json",
        "results.csv",
        "success.png",
        "episode_000.mp4",
        "episode_001.mp4",
    }
    saved = json.loads((tmp_path / "results.json").read_text())[0]
    assert saved["successes"] == result.successes and len(saved["per_episode"]) == 2
    assert len((tmp_path / "results.csv").read_text().strip().splitlines()) == 3
    video = load_decord().VideoReader(str(tmp_path / "episode_000.mp4"))
    assert len(video) == result.per_episode[0]["length"] or len(video) == 12


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_vectorised_eval_matches_the_serial_one(tiny_policy, tmp_path):
    from voltron.policy.evaluate import run_episodes

    policy = load_policy(tiny_policy[0])
    options = dict(seed=5, horizon=8, image_size=64, progress=False, threads=1)  # threads: GEMM sums split by them
    serial, _, _, _ = run_episodes(policy, TASK, 2, num_envs=1, **options)
    vector, _, _, _ = run_episodes(policy, TASK, 2, num_envs=2, **options)
    # each env has its own policy fork acting on batches of one: the same actions, bit for bit, however many envs
    assert serial == vector and [e["episode"] for e in vector] == [0, 1]


def test_mismatched_policy_fails_before_any_rollout(tiny_policy):
    from voltron.policy.evaluate import run_episodes

    policy = load_policy(tiny_policy[0])
    policy.proprio_dim = 7
    with pytest.raises(ValueError, match="proprio 7-d.*gives proprio 4-d"):
        run_episodes(policy, TASK, 1, num_envs=1, horizon=5, image_size=64, progress=False)


def test_wilson_interval():
    from voltron.policy.evaluate import wilson_interval

    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.25 < high < 0.35
    low, high = wilson_interval(5, 10)
    assert 0.2 < low < 0.3 and 0.7 < high < 0.8


@pytest.mark.slow  # a subprocess or end-to-end run: `make test` runs it, `make test-fast` leaves it out
def test_train_policy_cli_takes_dotted_overrides(sim_demos, tmp_path):
    cmd = [
        sys.executable, "-m", "voltron.cli", "train-policy", "--demos", str(sim_demos), "--encoder", "r-mvp-tiny",
        "--random-init", "--out", str(tmp_path / "run"), "--train.steps=3", "--policy.extractor=mean",
        "--policy.encoder_overrides={image_size: 64}",
        "--policy.hidden_dims=[32,32]", "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["policy"]["extractor"] == "mean" and config["train"]["steps"] == 3
    missing = subprocess.run(
        [*cmd[:5], str(tmp_path / "none.hdf5"), *cmd[6:]], capture_output=True, text=True, timeout=300
    )
    assert missing.returncode == 2 and "none.hdf5" in missing.stderr


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_fine_tuning_trains_the_encoder_with_its_own_lr_and_stores_it(sim_demos, tmp_path, bc_config):
    config = bc_config("--policy.freeze_encoder=false", "--train.encoder_lr=1e-3", "--train.batch_size=8", steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_policy(config, sim_demos, tmp_path, progress=False)
    from voltron.models.registry import build_model

    policy = load_policy(tmp_path)
    torch.manual_seed(config.policy.seed)  # what open_encoder does: the starting weights of the fine-tuned encoder
    initial = build_model("v-cond-tiny", image_size=64)
    assert not torch.equal(policy.encoder.patch2embed.proj.weight, initial.patch2embed.proj.weight)
    assert torch.equal(
        policy.encoder.lm.model.embeddings.word_embeddings.weight, initial.lm.model.embeddings.word_embeddings.weight
    )
    assert not policy.training  # loaded policies come back in eval mode


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_eval_mode_matches_what_training_optimised(sim_demos, tmp_path, bc_config):
    """The head's BatchNorm statistics come from the final extractor: the deployed (eval-mode) policy's loss on
    its own training windows is close to the train-mode loss, even with a trainable MAP extractor in front of the
    BatchNorm and a constant learning rate (where running averages lag furthest behind)."""
    import copy

    from voltron.policy.train import load_split, make_batch

    config = bc_config("--train.schedule=constant", "--train.lr=3e-3", "--policy.extractor=map", steps=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train_policy(config, sim_demos, tmp_path, progress=False)
    policy = load_policy(tmp_path)
    windows = WindowDataset(load_split(sim_demos, "train", True), 1, policy.camera)
    batch = make_batch(windows, torch.arange(len(windows)), None)
    with torch.no_grad():
        eval_loss = float(policy(batch)[0])
        train_mode = copy.deepcopy(policy).train()  # batch statistics of all training windows at once
        train_loss = float(train_mode(batch)[0])
    assert eval_loss == pytest.approx(summary["train_loss_eval_mode"], rel=0.05, abs=1e-4)
    assert eval_loss < 1.5 * train_loss + 1e-3, (eval_loss, train_loss)


def test_eval_refuses_demo_seeds_and_writes_lerobot_eval_info(tiny_policy, tmp_path):
    from voltron.policy.evaluate import EVAL_SEED_OFFSET, evaluate

    out, summary = tiny_policy
    assert summary["demo_seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match="seed.*demos were collected with"):
        evaluate(out, TASK, episodes=2, seed=0, num_envs=1, horizon=5, out_dir=tmp_path / "overlap", progress=False)
    assert not (tmp_path / "overlap").exists()
    result = evaluate(out, TASK, episodes=2, num_envs=1, horizon=6, out_dir=tmp_path, videos=0, progress=False)
    assert result.seed == EVAL_SEED_OFFSET and [e["seed"] for e in result.per_episode] == [100_000, 100_001]
    info = json.loads((tmp_path / "eval_info.json").read_text())
    for key in ("pc_success", "avg_sum_reward", "avg_max_reward", "n_episodes", "pc_success_ci95", "eval_s"):
        assert key in info["overall"] and key in info["aggregated"] and key in info["per_task"][0]["metrics"]
    assert info["overall"]["n_episodes"] == 2 and info["per_task"][0]["task"] == TASK
    for episode in info["per_episode"]:
        assert {"episode_ix", "seed", "success", "length", "sum_reward", "max_reward"} <= set(episode)
    assert info["code_version"].startswith("0.") and info["settings"][0]["mode"] == "eval"
    assert info["settings"][0]["horizon"] == 6 and info["settings"][0]["camera"] == "corner"


@pytest.mark.slow  # a subprocess or end-to-end run: `make test` runs it, `make test-fast` leaves it out
def test_eval_resumes_after_sigkill_with_identical_episodes(tiny_policy, tmp_path):
    import os
    import signal
    import time

    out, _ = tiny_policy
    cmd = [
        sys.executable, "-m", "voltron.cli", "eval", "--policy", str(out), "--task", TASK, "--episodes", "4",
        "--num-envs", "1", "--horizon", "25", "--videos", "0", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    log = killed_dir / "episodes.jsonl"
    process = subprocess.Popen([*cmd, "--out", str(killed_dir)], env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:  # settings + two finished episodes
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    assert 2 <= len(kept) < 4, "the kill should land mid-evaluation"
    for directory in (killed_dir, whole_dir):
        result = subprocess.run([*cmd, "--out", str(directory)], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((killed_dir / "results.json").read_text())[0]["per_episode"]
    whole = json.loads((whole_dir / "results.json").read_text())[0]["per_episode"]
    assert resumed == whole and [e["episode"] for e in resumed] == [0, 1, 2, 3]
    assert kept == whole[: len(kept)]
