"""bag2demos on bags written here with rosbags in all three formats (ROS 1 .bag, ROS 2 sqlite3, ROS 2 MCAP).

The synthetic recording encodes time in its content (joint positions are functions of the stamp, image brightness is
the frame number, command values the command number), so the expected alignment is computed independently of the
converter from the message lists. Includes a camera gap, a bag missing its camera topic, a bag without commands
(actions from the next state), raw Image frames and an episode split topic.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="bag2demos needs the [ros] extra (rosbags)")

from rosbags.rosbag1 import Writer as Writer1  # noqa: E402
from rosbags.rosbag2 import StoragePlugin  # noqa: E402
from rosbags.rosbag2 import Writer as Writer2  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from voltron.datasets.demos import DemoFile  # noqa: E402
from voltron.ros.bags import bag2demos, convert_bag  # noqa: E402
from voltron.ros.config import robot_config_from_dict  # noqa: E402

T0 = 1_700_000_000.0
FPS = 15.0
JOINT_HZ, CAMERA_HZ, COMMAND_HZ = 50.0, 30.0, 15.0
DURATION = 3.0
CAMERA_START = 0.01
GAP = (1.2, 1.7)  # seconds after T0 without camera frames
COMMAND_START = 0.05
LOG_DELAY = 0.004  # log time = stamp + this: the converter must align on header stamps
H, W = 24, 32
INSTRUCTION = "put the block in the bin"
FORMATS = ["ros1", "sqlite3", "mcap"]


def config(**bag):
    return robot_config_from_dict(
        {
            "name": "test-arm",
            "cameras": {"front": {"topic": "/camera/image", "type": "sensor_msgs/CompressedImage"}},
            "state": [{"topic": "/joint_states", "type": "sensor_msgs/JointState", "joints": ["j1", "j2", "j3"]}],
            "instruction": {"topic": "/instruction", "default": "default instruction"},
            "action": {
                "topic": "/commands",
                "type": "std_msgs/Float64MultiArray",
                "kind": "position",
                "joints": ["j1", "j2", "j3"],
                "low": [-10, -10, -10],
                "high": [10, 10, 10],
            },
            "bag": {"gap_periods": 2.0, "min_steps": 2, **bag},
        },
        "test config",
    )


# --- the recording, as plain data -------------------------------------------------------------------------------------
def joint_times():
    return [T0 + i / JOINT_HZ for i in range(int(DURATION * JOINT_HZ) + 1)]


def joint_positions(t):
    s = t - T0
    return [s, 2 * s, -s]


def camera_frames():
    """(stamp, frame number) for every frame actually recorded (none inside GAP)."""
    out = []
    for i in range(int((DURATION - CAMERA_START) * CAMERA_HZ) + 1):
        t = T0 + CAMERA_START + i / CAMERA_HZ
        if not GAP[0] <= t - T0 < GAP[1]:
            out.append((t, i))
    return out


def frame_level(i):
    return (i * 3) % 240 + 8  # uniform grey level that JPEG keeps within a few units


def command_times():
    return [T0 + COMMAND_START + k / COMMAND_HZ for k in range(int((DURATION - COMMAND_START) * COMMAND_HZ) + 1)]


def command_values(k):
    return [0.01 * k, -0.02 * k, 0.5]


def jpeg_bytes(level):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), level, np.uint8)).save(buffer, format="JPEG", quality=95)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


# --- writing bags with rosbags ----------------------------------------------------------------------------------------
def write_bag(path: Path, fmt: str, *, camera=True, commands=True, raw_images=False, marker_at=None):
    ros1 = fmt == "ros1"
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_JAZZY)
    T = store.types

    def header(t):
        stamp = T["builtin_interfaces/msg/Time"](sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))
        if ros1:
            return T["std_msgs/msg/Header"](seq=0, stamp=stamp, frame_id="")
        return T["std_msgs/msg/Header"](stamp=stamp, frame_id="")

    messages = []  # (log_ns, topic, msgtype, msg)
    js = "sensor_msgs/msg/JointState"
    for t in joint_times():
        msg = T[js](
            header=header(t),
            name=["j1", "j2", "j3", "gripper"],
            position=np.array(joint_positions(t) + [0.04]),
            velocity=np.zeros(4),
            effort=np.zeros(0),
        )
        messages.append((t + LOG_DELAY, "/joint_states", js, msg))
    if camera:
        for t, i in camera_frames():
            if raw_images:
                typ = "sensor_msgs/msg/Image"
                data = np.full((H, W, 3), frame_level(i), np.uint8)
                data[0, 0] = [i % 256, 0, 255]  # a pixel that rgb8 keeps exactly
                msg = T[typ](
                    header=header(t),
                    height=H,
                    width=W,
                    encoding="rgb8",
                    is_bigendian=0,
                    step=W * 3,
                    data=data.reshape(-1),
                )
            else:
                typ = "sensor_msgs/msg/CompressedImage"
                msg = T[typ](header=header(t), format="jpeg", data=jpeg_bytes(frame_level(i)))
            messages.append((t + LOG_DELAY, "/camera/image", typ, msg))
    if commands:
        fma = "std_msgs/msg/Float64MultiArray"
        for k, t in enumerate(command_times()):
            layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
            messages.append((t, "/commands", fma, T[fma](layout=layout, data=np.array(command_values(k)))))
    messages.append((T0 + 0.001, "/instruction", "std_msgs/msg/String", T["std_msgs/msg/String"](data=INSTRUCTION)))
    if marker_at is not None:
        for offset in (0.0, 0.05):  # two events of one call (e.g. request and response): merged into one marker
            messages.append((T0 + marker_at + offset, "/episode", "std_msgs/msg/Empty", T["std_msgs/msg/Empty"]()))
    messages.sort(key=lambda m: m[0])

    if ros1:
        writer = Writer1(path)
    else:
        plugin = StoragePlugin.MCAP if fmt == "mcap" else StoragePlugin.SQLITE3
        writer = Writer2(path, version=9, storage_plugin=plugin)
    with writer:
        connections = {}
        for log_t, topic, typ, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, typ, typestore=store)
            raw = store.serialize_ros1(msg, typ) if ros1 else store.serialize_cdr(msg, typ)
            writer.write(connections[topic], int(round(log_t * 1e9)), raw)
    return path


def bag_path(tmp_path: Path, fmt: str, name: str) -> Path:
    return tmp_path / (f"{name}.bag" if fmt == "ros1" else name)


# --- expectations computed from the recording -------------------------------------------------------------------------
def latest(items, t):
    """The last item whose time is at or before t (plain scan, independent of the converter's searchsorted)."""
    best = None
    for time_, value in items:
        if time_ <= t + 1e-9:
            best = value
    return best


def expected_ticks():
    first = max(T0, T0 + CAMERA_START, T0 + COMMAND_START - 1 / FPS)
    end = T0 + DURATION
    n = int(np.floor((end - first) * FPS + 1e-9)) + 1
    return first + np.arange(n) / FPS


# --- tests ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bags")
    results = {}
    for fmt in FORMATS:
        bag = write_bag(bag_path(tmp, fmt, f"demo_{fmt}"), fmt)
        results[fmt] = list(convert_bag(bag, config(), FPS))
    return results


@pytest.mark.parametrize("fmt", FORMATS)
def test_alignment_matches_the_recording(converted, fmt):
    ((report, episode),) = converted[fmt]
    assert report.skipped is None, report.skipped
    ticks = expected_ticks()
    steps = len(ticks) - 1
    assert report.steps == steps == len(episode.actions) == len(episode.proprio)
    assert report.language == episode.language == INSTRUCTION
    assert report.action_source == "/commands"

    joints = [(t, joint_positions(t)) for t in joint_times()]
    expected_proprio = np.array([latest(joints, t) for t in ticks[:-1]])
    np.testing.assert_allclose(episode.proprio, expected_proprio, atol=1e-5)

    # Commands carry no header: they align on log time; action[t] is the command in force at tick t+1.
    commands = [(t, command_values(k)) for k, t in enumerate(command_times())]
    expected_actions = np.array([latest(commands, t) for t in ticks[1:]])
    np.testing.assert_allclose(episode.actions, expected_actions, atol=1e-6)

    frames = camera_frames()
    expected_levels = np.array([frame_level(latest(frames, t)) for t in ticks[:-1]])
    images = episode.images["front"]
    assert images.shape == (steps, H, W, 3) and images.dtype == np.uint8
    assert np.all(np.abs(images.reshape(steps, -1).mean(axis=1) - expected_levels) < 3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_camera_gap_is_flagged_and_reported(converted, fmt):
    ((report, episode),) = converted[fmt]
    assert set(report.gaps) == {"camera:front"}, report.gaps
    ((start, stop),) = report.gaps["camera:front"]
    t0 = expected_ticks()[0] - T0
    # Frames stop after 1.2 s; ticks become stale 2 periods later and stay stale until the 1.7 s frame.
    assert GAP[0] + 2 / FPS - 1 / FPS <= start + t0 <= GAP[0] + 2 / FPS + 1 / FPS
    assert GAP[1] - 1 / FPS <= stop + t0 <= GAP[1]
    assert episode.attrs["gap_ticks"] == report.gap_ticks(FPS) > 0
    assert json.loads(episode.attrs["gaps"]) == report.gaps


def test_three_formats_give_identical_episodes(converted):
    episodes = {fmt: converted[fmt][0][1] for fmt in FORMATS}
    for fmt in FORMATS[1:]:
        np.testing.assert_array_equal(episodes[fmt].proprio, episodes["ros1"].proprio)
        np.testing.assert_array_equal(episodes[fmt].actions, episodes["ros1"].actions)
        np.testing.assert_array_equal(episodes[fmt].images["front"], episodes["ros1"].images["front"])


def test_missing_topic_skips_the_bag_and_says_which(tmp_path):
    bag = write_bag(bag_path(tmp_path, "mcap", "no_camera"), "mcap", camera=False)
    ((report, episode),) = list(convert_bag(bag, config(), FPS))
    assert episode is None and "/camera/image" in report.skipped


def test_actions_from_next_state_without_command_topic(tmp_path):
    bag = write_bag(bag_path(tmp_path, "sqlite3", "no_commands"), "sqlite3", commands=False)
    ((report, episode),) = list(convert_bag(bag, config(), FPS))
    assert report.skipped is None and report.action_source == "next state"
    # action[t] = joint positions at tick t+1 = proprio[t+1] (proprio is exactly those positions here).
    np.testing.assert_allclose(episode.actions[:-1], episode.proprio[1:], atol=1e-6)
    first = T0 + CAMERA_START  # no command constraint now
    last_tick = first + len(episode.actions) / FPS
    joints = [(t, joint_positions(t)) for t in joint_times()]
    np.testing.assert_allclose(episode.actions[-1], latest(joints, last_tick), atol=1e-5)


def test_raw_image_frames_round_trip_exactly(tmp_path):
    bag = write_bag(bag_path(tmp_path, "mcap", "raw"), "mcap", raw_images=True)
    ((report, episode),) = list(convert_bag(bag, _raw_config(), FPS))
    assert report.skipped is None
    ticks = expected_ticks()
    frames = camera_frames()
    numbers = [latest(frames, t) for t in ticks[:-1]]
    images = episode.images["front"]
    assert [int(px) for px in images[:, 0, 0, 0]] == [n % 256 for n in numbers]
    assert np.all(images[:, 1:, 1:] == np.array([frame_level(n) for n in numbers])[:, None, None, None])


def _raw_config():
    cfg = config()
    cfg.cameras["front"].type = "sensor_msgs/Image"
    return cfg


def test_split_topic_cuts_episodes(tmp_path):
    bag = write_bag(bag_path(tmp_path, "ros1", "split"), "ros1", marker_at=2.0)
    results = list(convert_bag(bag, config(split_topic="/episode"), FPS))
    assert len(results) == 2 and all(r.skipped is None for r, _ in results)
    first, second = results[0][0], results[1][0]
    assert first.start < T0 + 2.0 <= second.start < T0 + 2.0 + 1 / FPS
    assert first.steps + second.steps >= len(expected_ticks()) - 3


def test_bag2demos_writes_native_hdf5_and_cli_reports(tmp_path, capsys):
    from voltron.cli import main

    good = write_bag(bag_path(tmp_path, "ros1", "good"), "ros1")
    no_camera = write_bag(bag_path(tmp_path, "sqlite3", "bad"), "sqlite3", camera=False)
    robot = tmp_path / "robot.yaml"
    from voltron.ros.config import save_robot_config

    save_robot_config(config(), robot)
    out = tmp_path / "demos.hdf5"
    report_path = tmp_path / "report.json"
    code = main(
        [
            "ros",
            "bag2demos",
            str(good),
            str(no_camera),
            "--robot",
            str(robot),
            "--fps",
            str(FPS),
            "--out",
            str(out),
            "--report",
            str(report_path),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "1 written" in printed and "SKIPPED" in printed and "GAPS" in printed
    with DemoFile(out) as demos:
        assert len(demos) == 1
        episode = demos[0]
        assert episode.language == INSTRUCTION
        assert episode.images["front"].shape[1:] == (H, W, 3)
        assert episode.actions.shape[1] == 3 and episode.proprio.shape[1] == 3
        assert demos.env_args["env_name"] == "test-arm"
    saved = json.loads(report_path.read_text())
    assert [e["skipped"] is None for e in saved["episodes"]] == [True, False]

    # Only a bad bag: nothing written, non-zero exit.
    out2 = tmp_path / "none.hdf5"
    assert main(["ros", "bag2demos", str(no_camera), "--robot", str(robot), "--out", str(out2)]) == 1
    assert not out2.exists()


def test_bag2demos_empty_input_leaves_existing_file(tmp_path):
    no_camera = write_bag(bag_path(tmp_path, "mcap", "bad"), "mcap", camera=False)
    out = tmp_path / "keep.hdf5"
    out.write_bytes(b"previous")
    report = bag2demos([no_camera], config(), fps=FPS, out=out)
    assert report.episodes_written == 0 and out.read_bytes() == b"previous"
