"""LeRobot v3 datasets: our reader and writer against each other, against bad input, and against the real LeRobot
package (`lerobot-dataset` from PyPI in .venv-lerobot, scripts/setup_lerobot_peer.sh) and `lerobot-doctor`.

The peer tests skip, with the reason, when the peer venv is missing; they never pass without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from voltron.datasets.demos import Episode, write_demos
from voltron.datasets.episodes import describe_episodes, load_episodes, resolve_sources
from voltron.datasets.lerobot import (
    DECODE_STATS,
    LeRobotFormatError,
    LeRobotWriter,
    aggregate_stats,
    feature_stats,
    write_lerobot,
)
from voltron.datasets.video import write_video
from voltron.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PEER_SCRIPT = REPO / "tests" / "lerobot_peer" / "lerobot_peer.py"
sys.path[:0] = [str(PEER_SCRIPT.parent), str(REPO / "tests")]  # the peer's frame pattern, DROID fixtures
from lerobot_peer import pattern_frame  # noqa: E402  (numpy only: the frames the peer writes)

LENGTHS = (12, 9, 15)
PEER_CAMERAS = (  # our name, LeRobot key: two AV1 videos with DROID names, and PNG images in the parquet
    ("ext1", "observation.images.exterior_1_left"),
    ("wrist", "observation.images.wrist_left"),
    ("top", "observation.images.top"),
)
CODEC_TOLERANCE = 8.0  # mean absolute error (0-255) of a crf-30 AV1/H.264 frame of these flat patterns


def make_episodes(lengths=LENGTHS, cameras=("ext1", "wrist"), seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    episodes = []
    for e, length in enumerate(lengths):
        episodes.append(
            Episode(
                images={
                    name: np.stack([pattern_frame(c, e, t) for t in range(length)]) for c, name in enumerate(cameras)
                },
                proprio=rng.normal(size=(length, 8)).astype(np.float32),
                actions=rng.uniform(-1, 1, size=(length, 7)).astype(np.float32),
                language=f"task number {e % 2}: put the marker in the cup",
                rewards=rng.uniform(size=length).astype(np.float32),
                state=rng.normal(size=(length, 5)).astype(np.float32),
                attrs={"seed": 100 + e, "success": True},
            )
        )
    return episodes


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def h264_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lerobot") / "h264"
    splits = ["train", "train", "valid"]
    write_lerobot(root, zip(make_episodes(), splits), fps=15, vcodec="h264", robot_type="test")
    return root


# --- our writer and reader ------------------------------------------------------------------------------------------
def test_round_trip_keeps_every_field_and_the_layout_is_lerobot_v3(h264_dataset):
    info = json.loads((h264_dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 15 and info["total_episodes"] == 3
    assert info["total_frames"] == sum(LENGTHS) and info["splits"] == {"train": "0:2", "valid": "2:3"}
    assert info["features"]["observation.images.exterior_1_left"]["info"]["video.codec"] == "h264"
    assert sorted(p.relative_to(h264_dataset).as_posix() for p in h264_dataset.rglob("*") if p.is_file()) == [
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        "videos/observation.images.exterior_1_left/chunk-000/file-000.mp4",
        "videos/observation.images.wrist_left/chunk-000/file-000.mp4",
    ]
    stats = json.loads((h264_dataset / "meta/stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert np.shape(stats["observation.images.wrist_left"]["mean"]) == (3, 1, 1)

    original = make_episodes()
    episodes = load_episodes(h264_dataset)
    assert [len(e) for e in episodes] == list(LENGTHS)
    for ours, theirs in zip(episodes, original):
        assert sorted(ours.images) == ["ext1", "wrist"]  # DROID-in-LeRobot names come back as DROID roles
        for name in ours.images:
            assert ours.images[name].shape == theirs.images[name].shape
            assert mean_abs(ours.images[name], theirs.images[name]) < CODEC_TOLERANCE
        np.testing.assert_array_equal(ours.proprio, theirs.proprio)
        np.testing.assert_array_equal(ours.actions, theirs.actions)
        np.testing.assert_array_equal(ours.state, theirs.state)
        np.testing.assert_array_equal(ours.rewards, theirs.rewards)
        assert ours.language == theirs.language and ours.dones[-1] == 1
        assert ours.attrs["seed"] == theirs.attrs["seed"] and ours.attrs["source_format"] == "lerobot"
    assert [len(e) for e in load_episodes(h264_dataset, "valid")] == [15]
    assert describe_episodes(episodes)["formats"] == {"lerobot": 3}


def test_decord_and_pyav_return_the_same_frames_and_decord_is_verified(h264_dataset):
    before = DECODE_STATS.as_dict()
    decord = load_episodes(h264_dataset, lerobot_video_backend="decord", cameras=["wrist"])
    pyav = load_episodes(h264_dataset, lerobot_video_backend="pyav", cameras=["wrist"])
    for a, b in zip(decord, pyav):
        np.testing.assert_array_equal(a.images["wrist"], b.images["wrist"])
    after = DECODE_STATS.as_dict()
    assert after["verified_files"] == before["verified_files"] + 1  # the first read was checked against PyAV
    assert after["decord_segments"] - before["decord_segments"] == 3
    assert after["pyav_segments"] - before["pyav_segments"] >= 3


def test_selecting_episodes_and_cameras(h264_dataset):
    episodes = load_episodes(h264_dataset, cameras=["observation.images.wrist_left"], lerobot_episodes=[2, 0])
    assert [len(e) for e in episodes] == [12, 15] and list(episodes[0].images) == ["observation.images.wrist_left"]
    assert list(load_episodes(h264_dataset, cameras=["wrist_left"], lerobot_episodes=[1])[0].images) == ["wrist_left"]
    small = load_episodes(h264_dataset, cameras=["ext1"], image_size=32, lerobot_episodes=[1])[0]
    assert small.images["ext1"].shape == (9, 32, 32, 3)
    with pytest.raises(LeRobotFormatError, match=r"no camera\(s\) \['top'\].*'ext1'"):
        load_episodes(h264_dataset, cameras=["top"])
    with pytest.raises(LeRobotFormatError, match=r"no episode\(s\) \[7\]"):
        load_episodes(h264_dataset, lerobot_episodes=[7])
    with pytest.warns(UserWarning, match="no 'test' split"):
        assert load_episodes(h264_dataset, "test") == []


def test_a_directory_mixing_formats_reads_both(h264_dataset, tmp_path):
    mixed = tmp_path / "mixed"
    write_demos(mixed / "a.hdf5", make_episodes((5,), cameras=("ext1", "wrist"), seed=3), {"env_name": "test"})
    copy_dataset(h264_dataset, mixed / "b")
    assert [s.kind for s in resolve_sources(mixed)] == ["native", "lerobot"]
    summary = describe_episodes(load_episodes(mixed))
    assert summary["formats"] == {"lerobot": 3, "native": 1} and summary["episodes"] == 4


def test_stats_follow_lerobot():
    values = np.random.default_rng(1).normal(size=(20000, 3)).astype(np.float32)
    stats = feature_stats(values)  # 5000-bin histogram quantiles: within a bin or two of the exact ones
    for key, q in (("q01", 0.01), ("q10", 0.1), ("q50", 0.5), ("q99", 0.99)):
        np.testing.assert_allclose(stats[key], np.quantile(values, q, axis=0), atol=0.01)
    assert stats["count"].tolist() == [20000]
    frames = np.random.default_rng(2).integers(0, 256, size=(30, 16, 16, 3), dtype=np.uint8)
    image = feature_stats(frames, image=True)
    assert image["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(image["std"].ravel(), frames.reshape(-1, 3).std(0) / 255, rtol=1e-6)
    halves = aggregate_stats([{"x": feature_stats(values[:5000])}, {"x": feature_stats(values[5000:])}])
    np.testing.assert_allclose(halves["x"]["mean"], values.mean(0), rtol=1e-5)
    np.testing.assert_allclose(halves["x"]["std"], values.std(0), rtol=1e-4)


def test_v21_datasets_read(tmp_path):
    root = tmp_path / "v21"
    episodes = make_episodes((6, 4), cameras=("top",))
    info = {
        "codebase_version": "v2.1", "robot_type": "aloha", "total_episodes": 2, "total_frames": 10, "total_tasks": 2,
        "chunks_size": 1000, "fps": 10, "splits": {"train": "0:2"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "observation.images.top": {"dtype": "video", "shape": [48, 64, 3], "names": ["height", "width", "channel"]},
            "observation.state": {"dtype": "float32", "shape": [8], "names": None},
            "action": {"dtype": "float32", "shape": [7], "names": None},
            **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("frame_index", "episode_index", "index", "task_index")},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        },
    }  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    lines = [json.dumps({"episode_index": i, "tasks": [e.language], "length": len(e)}) for i, e in enumerate(episodes)]
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    tasks = [json.dumps({"task_index": i, "task": e.language}) for i, e in enumerate(episodes)]
    (root / "meta/tasks.jsonl").write_text("\n".join(tasks) + "\n")
    start = 0
    for i, episode in enumerate(episodes):
        n = len(episode)
        table = pa.table({
            "observation.state": pa.array(episode.proprio.tolist(), pa.list_(pa.float32())),
            "action": pa.array(episode.actions.tolist(), pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / 10), "frame_index": pa.array(np.arange(n)),
            "episode_index": pa.array(np.full(n, i)), "index": pa.array(np.arange(start, start + n)),
            "task_index": pa.array(np.full(n, i)),
        })  # fmt: skip
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/episode_{i:06d}.parquet")
        write_video(root / f"videos/chunk-000/observation.images.top/episode_{i:06d}.mp4", episode.images["top"], 10)
        start += n
    read = load_episodes(root)
    assert [len(e) for e in read] == [6, 4] and [e.language for e in read] == [e.language for e in episodes]
    for ours, theirs in zip(read, episodes):
        np.testing.assert_array_equal(ours.actions, theirs.actions)
        assert mean_abs(ours.images["top"], theirs.images["top"]) < CODEC_TOLERANCE


# --- bad input: one line naming the file and the key ----------------------------------------------------------------
def copy_dataset(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def one_line_error(call) -> str:
    with pytest.raises(LeRobotFormatError) as caught:
        call()
    assert isinstance(caught.value, UserError)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_info_json(h264_dataset, tmp_path):
    root = copy_dataset(h264_dataset, tmp_path / "ds")
    (root / "meta/info.json").unlink()
    message = one_line_error(lambda: load_episodes(root))
    assert (
        message.startswith(f"{root / 'meta/info.json'}: missing")
        and "expected a LeRobot dataset's meta/info.json" in message
    )


def test_unsupported_codebase_version(h264_dataset, tmp_path):
    root = copy_dataset(h264_dataset, tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.0"}))
    message = one_line_error(lambda: load_episodes(root))
    assert f"{root / 'meta/info.json'}: codebase_version: unsupported codebase_version 'v2.0'" in message
    assert "['v3.0', 'v2.1']" in message


def test_feature_absent_from_the_parquet(h264_dataset, tmp_path):
    root = copy_dataset(h264_dataset, tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.velocity"] = {"dtype": "float32", "shape": [7], "names": None}
    (root / "meta/info.json").write_text(json.dumps(info))
    message = one_line_error(lambda: load_episodes(root))
    assert message.startswith(f"{root / 'data/chunk-000/file-000.parquet'}: observation.velocity: feature named in")


def test_video_shorter_than_its_episode(h264_dataset, tmp_path):
    root = copy_dataset(h264_dataset, tmp_path / "ds")
    video = root / "videos/observation.images.wrist_left/chunk-000/file-000.mp4"
    write_video(video, np.stack([pattern_frame(1, 0, t) for t in range(30)]), 15)  # 36 frames are needed
    message = one_line_error(lambda: load_episodes(root, cameras=["wrist"], lerobot_episodes=[2]))
    assert (
        message.startswith(f"{video}: observation.images.wrist_left: episode 2")
        and "the video ends at 1.93333 s" in message
    )


def test_timestamp_outside_tolerance(h264_dataset, tmp_path):
    root = copy_dataset(h264_dataset, tmp_path / "ds")
    data = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(data)
    timestamps = table.column("timestamp").to_numpy().copy()
    timestamps[3] += 0.02  # a frame recorded 20 ms late, between two video frames
    pq.write_table(table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(timestamps)), data)
    message = one_line_error(lambda: load_episodes(root, cameras=["ext1"], lerobot_episodes=[0]))
    assert message.startswith(f"{root / 'videos/observation.images.exterior_1_left/chunk-000/file-000.mp4'}: ")
    assert "episode 0 (from_timestamp 0 s) frame 3 at 0.22 s" in message and "tolerance_s=0.0001" in message
    assert len(load_episodes(root, lerobot_episodes=[0], lerobot_tolerance_s=0.05)) == 1  # a looser tolerance reads it


# --- atomic, resumable writes ---------------------------------------------------------------------------------------
class Killed(Exception):
    pass


def test_a_killed_write_leaves_no_dataset_and_resumes(tmp_path):
    root = tmp_path / "out"
    episodes = make_episodes((6, 5, 7, 4), cameras=("top",))
    options = {"fps": 10, "vcodec": "h264", "data_files_size_in_mb": 1e-6}  # one episode per group of files

    def dies_after(n):
        for i, episode in enumerate(episodes):
            if i == n:
                raise Killed
            yield episode

    with pytest.raises(Killed):
        write_lerobot(root, dies_after(3), **options)
    assert not root.exists()  # only the hidden staging folder exists
    with LeRobotWriter(root, **options) as writer:
        assert writer.episodes_done == 3
    path = write_lerobot(root, episodes, **options)
    assert path == root and not (tmp_path / ".out.partial").exists()
    read = load_episodes(root)
    assert [len(e) for e in read] == [6, 5, 7, 4]
    for ours, theirs in zip(read, episodes):
        np.testing.assert_array_equal(ours.actions, theirs.actions)
    episodes_table = pq.read_table(root / "meta/episodes/chunk-000/file-003.parquet").to_pylist()[0]
    assert episodes_table["dataset_from_index"] == 18 and episodes_table["data/file_index"] == 3
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        write_lerobot(root, episodes, **options)
    with pytest.raises(UserError, match="vcodec='h264'"):  # a resume must use the killed write's settings
        with pytest.raises(Killed):
            write_lerobot(root, dies_after(1), **{**options, "overwrite": True})
        write_lerobot(root, episodes, **{**options, "vcodec": "libsvtav1", "overwrite": True})


def test_convert_cli_round_trip(tmp_path):
    from voltron.cli import main

    native = tmp_path / "demos.hdf5"
    write_demos(
        native, make_episodes((6, 5, 7), cameras=("corner",)), {"env_name": "t", "fps": 20}, valid_fraction=0.34
    )
    assert (
        main(
            [
                "demos",
                "convert",
                str(native),
                str(tmp_path / "lr"),
                "--to",
                "lerobot",
                "--vcodec",
                "h264",
                "--no-progress",
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["fps"] == 20 and info["splits"] == {"train": "0:2", "valid": "2:3"}
    assert (
        main(["demos", "convert", str(tmp_path / "lr"), str(tmp_path / "back.hdf5"), "--to", "hdf5", "--no-progress"])
        == 0
    )
    back, original = (
        load_episodes(tmp_path / "back.hdf5"),
        load_episodes(native, "train") + load_episodes(native, "valid"),
    )
    for ours, theirs in zip(back, original):
        np.testing.assert_array_equal(ours.actions, theirs.actions)
        assert ours.attrs["seed"] == theirs.attrs["seed"]
    assert main(["demos", "convert", str(native), str(tmp_path / "lr"), "--to", "lerobot", "--no-progress"]) == 2


# --- the real LeRobot peer ------------------------------------------------------------------------------------------
def peer_launcher() -> Path:
    launcher = REPO / ".venv-lerobot" / "bin" / "lerobot-peer"
    if not launcher.is_file():
        pytest.skip(f"LeRobot peer missing: {launcher} not found; run scripts/setup_lerobot_peer.sh (make test does)")
    return launcher


def run_peer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(peer_launcher()), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def peer_dataset(tmp_path_factory):
    """A dataset written by LeRobot itself (AV1, DROID camera names) and LeRobotDataset's view of every frame."""
    work = tmp_path_factory.mktemp("peer")
    run_peer(
        str(PEER_SCRIPT),
        "write",
        str(work / "ds"),
        "--lengths",
        ",".join(map(str, LENGTHS)),
        "--dump",
        str(work / "dump.npz"),
        cwd=work,
    )
    return work / "ds", dict(np.load(work / "dump.npz")), json.loads((work / "dump.json").read_text())


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_our_reader_matches_lerobots_reader_on_a_lerobot_written_dataset(peer_dataset):
    root, dump, meta = peer_dataset
    assert (
        meta["video_backend"] == "torchcodec"
        and meta["info"]["features"]["observation.images.wrist_left"]["info"]["video.codec"] == "av1"
    )
    episodes = load_episodes(root)
    for c, (name, key) in enumerate(PEER_CAMERAS):
        ours = np.concatenate([e.images[name] for e in episodes])
        assert mean_abs(ours, dump[key]) <= 0.5  # the same AV1 frames through libdav1d (PyAV) and torchcodec
        original = np.concatenate([np.stack([pattern_frame(c, e, t) for t in range(n)]) for e, n in enumerate(LENGTHS)])
        assert mean_abs(ours, original) < CODEC_TOLERANCE
    np.testing.assert_array_equal(np.concatenate([e.images["top"] for e in episodes]), dump["observation.images.top"])
    np.testing.assert_array_equal(np.concatenate([e.proprio for e in episodes]), dump["observation.state"])
    np.testing.assert_array_equal(np.concatenate([e.actions for e in episodes]), dump["action"])
    assert [e.language for e in episodes for _ in range(len(e))] == meta["tasks"]
    picked = load_episodes(root, lerobot_episodes=[2], cameras=["wrist"])[0]
    np.testing.assert_array_equal(picked.actions, dump["action"][dump["episode_index"] == 2])


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_lerobot_loads_our_dataset_and_lerobot_doctor_passes_it(peer_dataset, tmp_path):
    root, peer_dump, peer_meta = peer_dataset
    episodes = load_episodes(root)
    for e, episode in enumerate(episodes):  # the original frames, so the stats are comparable with LeRobot's
        episode.images = {
            name: np.stack([pattern_frame(c, e, t) for t in range(len(episode))])
            for c, (name, _) in enumerate(PEER_CAMERAS)
        }
    ours = write_lerobot(tmp_path / "ours", episodes, fps=15, robot_type="franka")
    run_peer(str(PEER_SCRIPT), "dump", str(ours), str(tmp_path / "dump.npz"), cwd=tmp_path)
    dump, meta = dict(np.load(tmp_path / "dump.npz")), json.loads((tmp_path / "dump.json").read_text())
    assert meta["num_episodes"] == 3 and meta["tasks"] == peer_meta["tasks"]
    read_back = load_episodes(ours)
    for name, key in PEER_CAMERAS:
        assert mean_abs(np.concatenate([e.images[name] for e in read_back]), dump[key]) <= 0.5
        assert mean_abs(dump[key], peer_dump[key]) < CODEC_TOLERANCE
    for key in ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index"):
        np.testing.assert_array_equal(dump[key], peer_dump[key])
    # Stats as LeRobot computes them (quantiles included), except the image std: LeRobot 0.4 squares uint8 pixels.
    theirs, mine = peer_meta["stats"], meta["stats"]
    assert sorted(theirs) == sorted(mine)
    for key in theirs:
        for stat in theirs[key]:
            if not (key.startswith("observation.images.") and stat == "std"):
                np.testing.assert_allclose(
                    mine[key][stat], theirs[key][stat], rtol=1e-6, atol=1e-7, err_msg=f"{key}/{stat}"
                )
    report = json.loads(run_peer("--doctor", "check", str(ours), "--json", cwd=tmp_path).stdout)
    failed = [(c["name"], m["message"]) for c in report["checks"] for m in c["messages"] if m["severity"] == "FAIL"]
    assert report["codebase_version"] == "v3.0" and failed == []


@pytest.mark.slow  # over ~3.5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_sim_collect_writes_a_lerobot_dataset(tmp_path):
    from voltron.cli import main

    out = tmp_path / "drawer-open"
    args = ["sim", "collect", "--task", "drawer-open", "--episodes", "2", "--image-size", "64", "--out", str(out)]
    assert main([*args, "--format", "lerobot", "--valid-fraction", "0.5", "--no-progress"]) == 0
    info = json.loads((out / "meta/info.json").read_text())
    assert info["fps"] == 80 and info["robot_type"] == "sawyer" and info["splits"] == {"train": "0:1", "valid": "1:2"}
    assert "observation.environment_state" in info["features"] and "observation.images.corner" in info["features"]
    episodes = load_episodes(out)
    assert [e.attrs["seed"] for e in episodes] == [0, 1] and episodes[0].images["corner"].shape[1:] == (64, 64, 3)
    assert episodes[0].language == "open the drawer" and episodes[0].state is not None
    assert main([*args, "--format", "lerobot", "--no-progress"]) == 2  # never replaced without --overwrite


def test_train_policy_on_a_lerobot_dataset_decodes_each_video_once(h264_dataset, tmp_path):
    from voltron.policy.config import load_bc_config
    from voltron.policy.train import train_policy

    overrides = [
        "--policy.encoder=r-mvp-tiny",
        "--policy.pretrained=false",
        "--policy.encoder_overrides={image_size: 64}",
    ]
    overrides += ["--policy.camera=wrist", "--policy.extractor=mean", "--train.steps=40", "--train.batch_size=8"]
    before = DECODE_STATS.as_dict()
    summary = train_policy(load_bc_config(None, overrides), h264_dataset, tmp_path / "run", progress=False)
    after = DECODE_STATS.as_dict()
    assert (
        summary["train_episodes"] == 2 and summary["valid_episodes"] == 1 and summary["demo_seeds"] == [100, 101, 102]
    )
    # 40 steps of 8 over 36 windows is ~9 epochs; the frozen encoder's tokens are cached, so each of the 3 episodes'
    # 2 videos is decoded once, when the demos load (PyAV's check of decord's first read of a file aside).
    delta = {k: after[k] - before[k] for k in after}
    assert delta["decord_segments"] + delta["pyav_segments"] - delta["verified_files"] == 3 * 2


def test_droid_raw_to_lerobot_to_train_policy(tmp_path):
    from test_episodes import SERIALS, make_droid_episode

    from voltron.cli import main

    raw = tmp_path / "droid_raw"
    for i in range(3):
        make_droid_episode(raw / f"episode_{i}", seed=i, uuid=f"TESTLab+5d05c5aa+2023-07-07-09h-4{i}m-23s")
    out = tmp_path / "droid_lerobot"
    assert main(["demos", "convert", str(raw), str(out), "--to", "lerobot", "--vcodec", "h264", "--no-progress"]) == 0
    info = json.loads((out / "meta/info.json").read_text())
    assert info["fps"] == 15 and info["robot_type"] == "franka" and info["total_episodes"] == 3
    assert {k for k in info["features"] if k.startswith("observation.images.")} == {
        "observation.images.exterior_1_left",
        "observation.images.exterior_2_left",
        "observation.images.wrist_left",
    }  # fmt: skip — DROID-in-LeRobot's camera names, as LeRobot's port_droid.py writes them
    raw_episodes, converted = load_episodes(raw), load_episodes(out)
    by_id = {e.attrs["episode_id"]: e for e in converted}
    for episode in raw_episodes:
        copy = by_id[episode.attrs["episode_id"]]
        np.testing.assert_array_equal(copy.actions, episode.actions)
        assert copy.language == episode.language and copy.attrs["camera_serial_wrist"] == SERIALS["wrist"]
        assert mean_abs(copy.images["ext1"], episode.images["ext1"]) < CODEC_TOLERANCE
    run = tmp_path / "run"
    train = ["train-policy", "--demos", str(out), "--encoder", "none", "--out", str(run), "--no-progress"]
    assert main([*train, "--train.steps=5", "--train.batch_size=4"]) == 0
    assert json.loads((run / "config.json").read_text())["training"]["train_episodes"] >= 1


def test_a_second_writer_is_refused_while_the_first_is_alive(tmp_path):
    staging = tmp_path / ".out.partial"
    staging.mkdir()
    other = subprocess.Popen(["sleep", "30"])
    try:
        (staging / ".lock").write_text(str(other.pid))
        with pytest.raises(UserError, match=f"another writer \\(pid {other.pid}\\) is writing it"):
            LeRobotWriter(tmp_path / "out", fps=10)
        assert staging.exists()  # its files were left alone
    finally:
        other.kill()
        other.wait()
    with LeRobotWriter(tmp_path / "out", fps=10) as writer:  # a dead writer's lock is stale
        assert writer.episodes_done == 0


def test_h264_444_at_crf_0_keeps_small_frames_nearly_lossless(tmp_path):
    episodes = make_episodes((6,), cameras=("top",))
    episodes[0].images["top"] = np.random.default_rng(0).integers(0, 256, size=(6, 48, 64, 3), dtype=np.uint8)
    root = write_lerobot(tmp_path / "ds", episodes, fps=10, vcodec="h264", crf=0, pix_fmt="yuv444p")
    assert (
        json.loads((root / "meta/info.json").read_text())["features"]["observation.images.top"]["info"]["video.pix_fmt"]
        == "yuv444p"
    )
    assert mean_abs(load_episodes(root)[0].images["top"], episodes[0].images["top"]) < 1.0  # colour conversion only
    with pytest.raises(UserError, match="pix_fmt='yuv444p': not available with vcodec='libsvtav1'"):
        LeRobotWriter(tmp_path / "other", fps=10, pix_fmt="yuv444p")
