"""Household demos through one interface: raw DROID folders (real HDF5 + H.264 MP4s), native files and directories."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from voltron.datasets.demos import DemoFile, DemoFormatError, Episode, write_demos
from voltron.datasets.droid import (
    ACTION_MODES,
    DroidFolder,
    droid_split,
    read_droid_episode,
)
from voltron.datasets.episodes import describe_episodes, load_episodes, resolve_sources
from voltron.datasets.video import iter_frames, write_video

STEPS, HEIGHT, WIDTH = 10, 48, 64
# DROID orders ext1/ext2 by serial, so the lower serial is ext1 (the camera_type fallback relies on that too).
SERIALS = {"wrist": "13062452", "ext1": "20521388", "ext2": "24259877"}
CAMERA_GREEN = {"wrist": 40, "ext1": 120, "ext2": 200}  # each camera's frames carry its own green level
QUADRANT_BLUE = {(True, True): 220, (True, False): 40, (False, True): 130, (False, False): 170}  # (top, left)
UUID = "TESTLab+5d05c5aa+2023-07-07-09h-42m-23s"


def expected_frame(role: str, step: int) -> np.ndarray:
    """Frame `step` of camera `role`: red encodes the step, green the camera, blue the quadrant (orientation)."""
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[..., 0] = 20 * step + 10
    frame[..., 1] = CAMERA_GREEN[role]
    for (top, left), blue in QUADRANT_BLUE.items():
        rows = slice(0, HEIGHT // 2) if top else slice(HEIGHT // 2, None)
        cols = slice(0, WIDTH // 2) if left else slice(WIDTH // 2, None)
        frame[rows, cols, 2] = blue
    return frame


def low_dim(steps: int, seed: int) -> dict[str, np.ndarray]:
    """The trajectory.h5 datasets (DROID names, float64 like the recorder writes), keyed by HDF5 path."""
    rng = np.random.default_rng(seed)
    arrays = {
        "observation/robot_state/cartesian_position": rng.normal(size=(steps, 6)),
        "observation/robot_state/gripper_position": rng.uniform(size=steps),
        "observation/robot_state/joint_positions": rng.normal(size=(steps, 7)),
        "observation/robot_state/joint_velocities": rng.normal(size=(steps, 7)),
        "observation/robot_state/joint_torques_computed": rng.normal(size=(steps, 7)),
        "observation/robot_state/prev_joint_torques_computed": rng.normal(size=(steps, 7)),
        "observation/robot_state/prev_joint_torques_computed_safened": rng.normal(size=(steps, 7)),
        "observation/robot_state/motor_torques_measured": rng.normal(size=(steps, 7)),
        "observation/robot_state/prev_controller_latency_ms": rng.uniform(size=steps),
        "observation/robot_state/prev_command_successful": np.ones(steps, bool),
        "observation/controller_info/success": np.zeros(steps, bool),
        "observation/controller_info/failure": np.zeros(steps, bool),
        "observation/controller_info/movement_enabled": np.ones(steps, bool),
        "observation/controller_info/controller_on": np.ones(steps, bool),
        "observation/timestamp/skip_action": np.zeros(steps, bool),
        "action/cartesian_position": rng.normal(size=(steps, 6)),
        "action/cartesian_velocity": rng.uniform(-1, 1, size=(steps, 6)),
        "action/joint_position": rng.normal(size=(steps, 7)),
        "action/joint_velocity": rng.uniform(-1, 1, size=(steps, 7)),
        "action/gripper_position": rng.uniform(size=steps),
        "action/gripper_velocity": rng.uniform(-1, 1, size=steps),
        "action/gripper_delta": rng.uniform(-1, 1, size=steps),
        "action/target_cartesian_position": rng.normal(size=(steps, 6)),
        "action/target_gripper_position": rng.uniform(size=steps),
        "action/robot_state/cartesian_position": rng.normal(size=(steps, 6)),
        "action/robot_state/gripper_position": rng.uniform(size=steps),
    }
    clock = 1_688_700_000_000 + 66 * np.arange(steps)  # ms, 15 Hz
    for key in ("robot_timestamp_seconds", "robot_timestamp_nanos", "read_start", "read_end"):
        arrays[f"observation/timestamp/robot_state/{key}"] = clock
    for key in ("step_start", "policy_start", "sleep_start", "control_start", "step_end"):
        arrays[f"observation/timestamp/control/{key}"] = clock
    for role, serial in SERIALS.items():
        for key in ("read_start", "read_end", "frame_received", "estimated_capture"):
            arrays[f"observation/timestamp/cameras/{serial}_{key}"] = clock
        arrays[f"observation/camera_type/{serial}"] = np.full(steps, 0 if role == "wrist" else 1, np.int64)
        for side in ("left", "right"):
            arrays[f"observation/camera_extrinsics/{serial}_{side}"] = rng.normal(size=(steps, 6))
            arrays[f"observation/camera_intrinsics/{serial}_{side}"] = np.tile(np.eye(3), (steps, 1, 1))
    arrays[f"observation/camera_extrinsics/{SERIALS['wrist']}_gripper_offset"] = rng.normal(size=(steps, 6))
    return arrays


def make_droid_episode(
    folder: Path,
    *,
    steps: int = STEPS,
    seed: int = 0,
    uuid: str = UUID,
    task: str | None = "put the marker in the cup",
    frames: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """A format-faithful raw DROID episode folder; returns the low-dim arrays written, by HDF5 path."""
    arrays = low_dim(steps, seed)
    folder.mkdir(parents=True)
    with h5py.File(folder / "trajectory.h5", "w") as file:
        for key, array in arrays.items():
            file.create_dataset(key, data=array)
    for role, serial in SERIALS.items():
        count = (frames or {}).get(role, steps)
        write_video(folder / "recordings/MP4" / f"{serial}.mp4", [expected_frame(role, t) for t in range(count)], 15)
    # A side-by-side stereo export sits next to the left views in real folders; it is not a camera of its own.
    stereo = [np.concatenate([expected_frame("ext1", t)] * 2, axis=1) for t in range(steps)]
    write_video(folder / "recordings/MP4" / f"{SERIALS['ext1']}-stereo.mp4", stereo, 15)
    metadata = {
        "uuid": uuid,
        "lab": "TESTLab",
        "user": "Tester",
        "user_id": "5d05c5aa",
        "date": "2023-07-07",
        "timestamp": "2023-07-07-09h-42m-23s",
        "hdf5_path": f"success/2023-07-07/{folder.name}/trajectory.h5",
        "building": "B1",
        "scene_id": 7,
        "success": True,
        "robot_serial": "panda-1",
        "droid_version": "1.3",
        "trajectory_length": steps,
        **{f"{role}_cam_serial": serial for role, serial in SERIALS.items()},
        **{f"{role}_cam_extrinsics": [0.1, 0.2, 0.3, 0.0, 0.0, 0.0] for role in SERIALS},
        **{f"{role}_mp4_path": f"recordings/MP4/{serial}.mp4" for role, serial in SERIALS.items()},
        **{f"{role}_svo_path": f"recordings/SVO/{serial}.svo" for role, serial in SERIALS.items()},
    }
    if task is not None:
        metadata["current_task"] = task
    (folder / f"metadata_{uuid}.json").write_text(json.dumps(metadata))
    return arrays


@pytest.fixture
def droid(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path / "TESTLab/success/2023-07-07/Fri_Jul__7_09:42:23_2023"
    return folder, make_droid_episode(folder)


def assert_frames(frames: np.ndarray, role: str, steps: int = STEPS, size: tuple[int, int] = (HEIGHT, WIDTH)):
    """The decoded frames carry `role`'s colour code, step by step, the right way up and round."""
    assert frames.dtype == np.uint8 and frames.shape == (steps, *size, 3)
    mid_row, mid_col = size[0] // 2, size[1] // 2
    for step, frame in enumerate(frames):
        for (top, left), blue in QUADRANT_BLUE.items():
            rows = slice(0, mid_row - 2) if top else slice(mid_row + 2, None)  # 2 px clear of resampling edges
            cols = slice(0, mid_col - 2) if left else slice(mid_col + 2, None)
            mean = frame[rows, cols].reshape(-1, 3).mean(0)
            np.testing.assert_allclose(mean, [20 * step + 10, CAMERA_GREEN[role], blue], atol=6)


# --- DROID reader ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(ACTION_MODES))
def test_droid_action_modes_append_the_gripper(droid, mode):
    folder, arrays = droid
    episode = read_droid_episode(folder, action=mode)
    assert isinstance(episode, Episode) and len(episode) == STEPS
    arm = arrays[ACTION_MODES[mode]]
    expected = np.concatenate([arm, arrays["action/gripper_position"][:, None]], axis=1).astype(np.float32)
    assert episode.actions.dtype == np.float32 and episode.actions.shape == (STEPS, arm.shape[1] + 1)
    np.testing.assert_array_equal(episode.actions, expected)
    assert episode.attrs["droid_action"] == mode


def test_droid_episode_matches_the_native_interface(droid):
    folder, arrays = droid
    episode = read_droid_episode(folder)
    # proprio: cartesian pose + gripper state (7), float32
    expected = np.concatenate(
        [
            arrays["observation/robot_state/cartesian_position"],
            arrays["observation/robot_state/gripper_position"][:, None],
        ],
        axis=1,
    ).astype(np.float32)
    assert episode.proprio.dtype == np.float32
    np.testing.assert_array_equal(episode.proprio, expected)
    assert episode.language == "put the marker in the cup"
    assert sorted(episode.images) == ["ext1", "ext2", "wrist"]  # every role; the -stereo file is not a camera
    for role in SERIALS:
        assert_frames(episode.images[role], role)
    # decord's frames are the same pixels PyAV decodes sequentially
    reference = np.stack(
        [f.to_ndarray(format="rgb24") for f in iter_frames(folder / f"recordings/MP4/{SERIALS['ext2']}.mp4")]
    )
    assert np.abs(episode.images["ext2"].astype(int) - reference).max() <= 1
    assert episode.dones.tolist() == [0] * (STEPS - 1) + [1]
    assert episode.attrs["episode_id"] == UUID and episode.attrs["success"] is True
    assert episode.attrs["camera_serial_wrist"] == SERIALS["wrist"]

    joint = read_droid_episode(folder, proprio="joint", cameras=["wrist"])
    assert joint.proprio.shape == (STEPS, 8)
    np.testing.assert_array_equal(
        joint.proprio[:, :7], arrays["observation/robot_state/joint_positions"].astype(np.float32)
    )

    # The episode writes to the native format and reads back unchanged.
    path = write_demos(folder.parent / "converted.hdf5", [episode], {"env_name": "droid"}, valid_fraction=0.0)
    with DemoFile(path) as demos:
        back = demos[0]
    np.testing.assert_array_equal(back.images["wrist"], episode.images["wrist"])
    np.testing.assert_array_equal(back.actions, episode.actions)
    assert back.language == episode.language and back.attrs["episode_id"] == UUID


def test_droid_cameras_by_role_and_by_serial(droid):
    folder, _ = droid
    by_role = read_droid_episode(folder, cameras=["wrist", "ext2"])
    assert list(by_role.images) == ["wrist", "ext2"]
    assert_frames(by_role.images["wrist"], "wrist")
    assert_frames(by_role.images["ext2"], "ext2")

    by_serial = read_droid_episode(folder, cameras=[SERIALS["ext1"]])
    assert list(by_serial.images) == [SERIALS["ext1"]]
    assert_frames(by_serial.images[SERIALS["ext1"]], "ext1")

    with pytest.raises(DemoFormatError, match=r"unknown camera 'ext3'.*\['ext1', 'ext2', 'wrist'\].*20521388"):
        read_droid_episode(folder, cameras=["ext3"])


def test_droid_roles_fall_back_to_camera_type_without_metadata(droid):
    folder, _ = droid
    (folder / f"metadata_{UUID}.json").unlink()
    (folder / "language_instruction.txt").write_text("\n  wipe the table  \nsecond annotation\n")
    assert DroidFolder(folder).roles() == {"ext1": SERIALS["ext1"], "ext2": SERIALS["ext2"], "wrist": SERIALS["wrist"]}
    episode = read_droid_episode(folder, cameras=["ext1", "wrist"])
    assert_frames(episode.images["ext1"], "ext1")
    assert_frames(episode.images["wrist"], "wrist")
    assert episode.language == "wipe the table"
    assert episode.attrs["episode_id"] == folder.name


def test_droid_resize_while_decoding(droid):
    folder, _ = droid
    square = read_droid_episode(folder, cameras=["ext1"], image_size=32)
    assert_frames(square.images["ext1"], "ext1", size=(32, 32))
    wide = read_droid_episode(folder, cameras=["wrist"], image_size=(24, 40))
    assert_frames(wide.images["wrist"], "wrist", size=(24, 40))


def test_droid_language_side_files(droid, tmp_path):
    folder, _ = droid
    (folder / "lang.txt").write_text("stack the cups\n")
    assert read_droid_episode(folder, cameras=["wrist"], language_file="lang.txt").language == "stack the cups"
    # One shared annotation file keyed by episode uuid (the DROID annotation release's layout), by absolute path.
    shared = tmp_path / "annotations.json"
    shared.write_text(json.dumps({UUID: {"language_instruction1": "open the drawer", "language_instruction2": "x"}}))
    assert DroidFolder(folder).language(shared) == "open the drawer"
    shared.write_text(json.dumps({"some-other-episode": {"language_instruction1": "nope"}}))
    assert DroidFolder(folder).language(shared) == "put the marker in the cup"  # no entry: the metadata's task


def test_droid_without_language_names_both_places(tmp_path):
    folder = tmp_path / "episode"
    make_droid_episode(folder, task=None)
    with pytest.raises(DemoFormatError, match=r"no language instruction.*language_instruction\.txt.*current_task"):
        read_droid_episode(folder)


def test_droid_missing_key_names_file_and_hdf5_path(droid):
    folder, _ = droid
    with h5py.File(folder / "trajectory.h5", "a") as file:
        del file["action/joint_velocity"]
        del file["observation/robot_state/gripper_position"]
    trajectory = str(folder / "trajectory.h5")
    with pytest.raises(DemoFormatError) as error:
        read_droid_episode(folder, action="joint_velocity")
    assert trajectory in str(error.value) and "/action/joint_velocity holds nothing" in str(error.value)
    with pytest.raises(DemoFormatError) as error:
        read_droid_episode(folder)
    assert trajectory in str(error.value) and "/observation/robot_state/gripper_position" in str(error.value)
    with pytest.raises(ValueError, match=r"action mode 'eef_delta'.*cartesian_velocity"):
        read_droid_episode(folder, action="eef_delta")


def test_droid_missing_mp4_names_file_and_serial(droid):
    folder, _ = droid
    mp4 = folder / f"recordings/MP4/{SERIALS['ext2']}.mp4"
    mp4.unlink()
    with pytest.raises(DemoFormatError) as error:
        read_droid_episode(folder)
    assert str(mp4) in str(error.value) and f"serial {SERIALS['ext2']}" in str(error.value)
    assert sorted(read_droid_episode(folder, cameras=["wrist", "ext1"]).images) == ["ext1", "wrist"]


def test_droid_frame_count_mismatch_is_reported_or_truncated(tmp_path):
    folder = tmp_path / "episode"
    arrays = make_droid_episode(folder, frames={"ext1": STEPS + 2, "wrist": STEPS - 3})
    with pytest.raises(
        DemoFormatError,
        match=rf"{SERIALS['ext1']}\.mp4: camera 'ext1' .* has {STEPS + 2} frames but .*trajectory\.h5 has {STEPS} steps",
    ):
        read_droid_episode(folder, cameras=["ext1"])
    with pytest.raises(DemoFormatError, match=rf"camera 'wrist' \(serial {SERIALS['wrist']}\) has {STEPS - 3} frames"):
        read_droid_episode(folder, cameras=["wrist"])
    # truncate: frame i stays step i, everything cut to the shortest stream
    only_ext1 = read_droid_episode(folder, cameras=["ext1"], frame_mismatch="truncate")
    assert len(only_ext1) == STEPS and only_ext1.images["ext1"].shape[0] == STEPS
    short = read_droid_episode(folder, frame_mismatch="truncate")
    assert len(short) == STEPS - 3 and short.attrs["droid_steps"] == STEPS
    assert all(frames.shape[0] == STEPS - 3 for frames in short.images.values())
    assert_frames(short.images["ext1"], "ext1", steps=STEPS - 3)
    np.testing.assert_array_equal(
        short.actions[:, :6], arrays["action/cartesian_velocity"][: STEPS - 3].astype(np.float32)
    )
    assert short.dones[-1] == 1


# --- load_episodes ---------------------------------------------------------------------------------------------------


def native_episodes(count: int, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [
        Episode(
            images={c: rng.integers(0, 256, size=(5 + i, 16, 16, 3), dtype=np.uint8) for c in ("corner", "wrist")},
            proprio=rng.normal(size=(5 + i, 4)).astype(np.float32),
            actions=rng.uniform(-1, 1, size=(5 + i, 4)).astype(np.float32),
            language=f"open the drawer {i}",
            attrs={"index": i},
        )
        for i in range(count)
    ]


def test_load_native_file_honours_splits_cameras_and_size(tmp_path):
    written = native_episodes(6)
    path = write_demos(tmp_path / "demos.hdf5", written, {"env_name": "drawer-open-v3"}, valid_fraction=0.34, seed=3)
    everything = load_episodes(path)
    assert [e.attrs["index"] for e in everything] == list(range(6))
    np.testing.assert_array_equal(everything[2].images["corner"], written[2].images["corner"])
    train, valid = load_episodes(path, "train"), load_episodes(str(path), split="valid")
    with DemoFile(path, split="valid") as demos:
        assert [e.attrs["index"] for e in valid] == [int(k.split("_")[1]) for k in demos.demo_keys]
    assert len(train) + len(valid) == 6 and not {e.attrs["index"] for e in train} & {e.attrs["index"] for e in valid}

    small = load_episodes(path, cameras=["wrist"], image_size=8)
    assert list(small[0].images) == ["wrist"] and small[0].images["wrist"].shape == (5, 8, 8, 3)
    assert small[0].images["wrist"].dtype == np.uint8

    with pytest.raises(DemoFormatError, match=r"demos\.hdf5: unknown split 'test'.*\['train', 'valid'\]"):
        load_episodes(path, "test")
    with pytest.raises(DemoFormatError, match=r"no camera\(s\) \['ext1'\]; the file has cameras \['corner', 'wrist'\]"):
        load_episodes(path, cameras=["ext1"])
    with pytest.raises(ValueError, match=r"droid_action='eef_delta'; expected one of \['cartesian_position'"):
        load_episodes(path, droid_action="eef_delta")  # checked before reading, even with no DROID folder


def test_load_directory_mixing_native_files_and_droid_folders(tmp_path):
    root = tmp_path / "demos"
    write_demos(root / "b_sim.hdf5", native_episodes(2), {"env_name": "sim"}, valid_fraction=0.5)
    write_demos(root / "nested/a_ros.h5", native_episodes(1, seed=1), {"env_name": "ros"}, valid_fraction=0.0)
    make_droid_episode(root / "droid/lab/success/2023-07-08/ep_b", uuid="lab+b", task="task b", seed=2)
    make_droid_episode(root / "droid/lab/success/2023-07-07/ep_a", uuid="lab+a", task="task a", seed=1)
    (root / ".b_sim.hdf5.123-abc.partial").write_bytes(b"")  # a killed writer's leftover is not a source
    (root / "notes.txt").write_text("ignored")

    sources = resolve_sources(root)
    assert [(s.kind, s.path.relative_to(root).as_posix()) for s in sources] == [
        ("native", "b_sim.hdf5"),
        ("droid", "droid/lab/success/2023-07-07/ep_a"),
        ("droid", "droid/lab/success/2023-07-08/ep_b"),
        ("native", "nested/a_ros.h5"),
    ]
    episodes = load_episodes(root, cameras=None, image_size=16, droid_action="joint_velocity")
    assert [e.language for e in episodes] == [
        "open the drawer 0",
        "open the drawer 1",
        "task a",
        "task b",
        "open the drawer 0",
    ]
    assert episodes[2].actions.shape == (STEPS, 8) and episodes[2].images["ext1"].shape == (STEPS, 16, 16, 3)

    summary = describe_episodes(episodes)
    assert summary["episodes"] == 5 and summary["steps"] == 5 + 6 + STEPS + STEPS + 5
    assert summary["length"] == {"min": 5, "max": STEPS, "mean": (5 + 6 + 2 * STEPS + 5) / 5}
    assert summary["formats"] == {"droid": 2, "native": 3}
    assert summary["cameras"]["corner"] == {"episodes": 3, "sizes_hw": [[16, 16]]}
    assert summary["cameras"]["ext2"] == {"episodes": 2, "sizes_hw": [[16, 16]]}
    assert summary["action_dims"] == [4, 8] and summary["proprio_dims"] == [4, 7]
    assert summary["instructions"] == 4 and summary["without_language"] == 0
    json.dumps(summary)  # JSON-able for CLI output

    # A list of sources keeps its order; a trajectory.h5 path stands for its folder.
    listed = load_episodes(
        [root / "droid/lab/success/2023-07-08/ep_b/trajectory.h5", root / "nested/a_ros.h5"], cameras=["wrist"]
    )
    assert [e.language for e in listed] == ["task b", "open the drawer 0"]

    # Splits: native masks, DROID by id hash (0 % valid: all train; 100 %: all valid); an unknown split is an error.
    droid_dir = root / "droid"
    assert len(load_episodes(droid_dir, "train", cameras=["wrist"], droid_valid_percent=0.0)) == 2
    assert len(load_episodes(droid_dir, "valid", cameras=["wrist"], droid_valid_percent=0.0)) == 0
    assert len(load_episodes(droid_dir, "valid", cameras=["wrist"], droid_valid_percent=100.0)) == 2
    with pytest.raises(
        DemoFormatError, match=r"ep_a: unknown split 'test' for a DROID episode folder.*\['train', 'valid'\]"
    ):
        load_episodes(droid_dir, "test")
    with pytest.raises(DemoFormatError, match=r"unknown split 'test'"):
        load_episodes(root, "test")


def test_droid_split_is_a_stable_hash():
    ids = [f"lab+{i:04d}" for i in range(2000)]
    splits = [droid_split(i) for i in ids]
    assert splits == [droid_split(i) for i in ids]
    assert 0.07 < splits.count("valid") / len(ids) < 0.13
    assert droid_split("AUTOLab+5d05c5aa+2023-07-07-09h-42m-23s", 0.0) == "train"


def test_unrecognised_sources_say_what_was_expected(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    with pytest.raises(
        ValueError, match=r"clip\.mp4: not a demo source; expected a native demo file .*DROID episode folder"
    ):
        load_episodes(tmp_path / "clip.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no demo files or DROID episode folders found"):
        load_episodes(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"missing\.hdf5: no such file or directory"):
        load_episodes(tmp_path / "missing.hdf5")
    with pytest.raises(ValueError, match=r"empty list of demo sources"):
        load_episodes([])
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as file:
        file.create_dataset("x", data=np.zeros(3))
    with pytest.raises(DemoFormatError, match=r"foreign\.h5: /data holds nothing; expected a group"):
        load_episodes(foreign)
