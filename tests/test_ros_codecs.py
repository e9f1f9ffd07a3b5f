"""Message codecs: numpy <-> ROS message dicts round-trip (exactly where the encoding is lossless), through JSON as
rosbridge carries them and through rosbags serialization as bags store them."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from voltron.ros import codecs
from voltron.ros.config import ActionConfig, StateSource, normalize_type


def smooth_rgb(height=48, width=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1) % 256
    return np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)


def via_json(msg):
    """What a message looks like after a trip through rosbridge's JSON."""
    return json.loads(json.dumps(msg))


@pytest.mark.parametrize("ros_version", [1, 2])
def test_stamps_round_trip_to_the_nanosecond(ros_version):
    for t in (0.0, 1.5, 1_700_000_000.123456789, 12.999_999_999_9):
        stamp = codecs.sec_to_stamp(t, ros_version)
        assert set(stamp) == ({"secs", "nsecs"} if ros_version == 1 else {"sec", "nanosec"})
        assert 0 <= list(stamp.values())[1] < 1_000_000_000
        assert abs(codecs.stamp_to_sec(stamp) - t) < 2e-9 * max(1.0, t / 1e9)
    header = codecs.make_header(5.25, "cam", ros_version)
    assert codecs.header_stamp({"header": header}) == 5.25
    assert codecs.header_stamp({"header": codecs.make_header(None)}) is None  # zero stamp means unset


@pytest.mark.parametrize("ros_version", [1, 2])
def test_joint_state_round_trip_exact(ros_version):
    rng = np.random.default_rng(1)
    names = [f"joint{i}" for i in range(7)]
    position, velocity, effort = rng.normal(size=(3, 7))
    msg = via_json(codecs.encode_joint_state(names, position, velocity, effort, 123.456, ros_version))
    sample = codecs.decode_joint_state(msg)
    assert sample.names == names
    np.testing.assert_array_equal(sample.position, position)
    np.testing.assert_array_equal(sample.velocity, velocity)
    np.testing.assert_array_equal(sample.effort, effort)
    assert abs(sample.stamp - 123.456) < 1e-9


def test_state_features_pick_and_order_joints():
    msg = codecs.encode_joint_state(["b", "a", "c"], [2.0, 1.0, 3.0], [20.0, 10.0, 30.0], None, 1.0)
    source = StateSource(joints=["a", "c"], fields=["position", "velocity"])
    np.testing.assert_array_equal(codecs.decode_state(msg, source), [1.0, 3.0, 10.0, 30.0])
    np.testing.assert_array_equal(codecs.joint_positions(msg, ["c", "b"]), [3.0, 2.0])
    assert codecs.joint_positions(msg, ["missing"]) is None
    with pytest.raises(KeyError, match="missing"):
        codecs.decode_state(msg, StateSource(topic="/js", joints=["a", "missing"]))
    with pytest.raises(KeyError, match="effort"):
        codecs.decode_state(msg, StateSource(joints=["a"], fields=["effort"]))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_raw_image_round_trip_exact(encoding):
    rgb = smooth_rgb()
    msg = via_json(codecs.encode_image(rgb, encoding, stamp=2.0))
    assert msg["encoding"] == encoding and msg["step"] == rgb.shape[1] * 3
    np.testing.assert_array_equal(codecs.decode_image(msg), rgb)
    raw = np.frombuffer(base64.b64decode(msg["data"]), np.uint8).reshape(rgb.shape)
    np.testing.assert_array_equal(raw, rgb if encoding == "rgb8" else rgb[..., ::-1])


def test_raw_image_with_row_padding_and_other_encodings():
    rgb = smooth_rgb(5, 7)
    padded = np.zeros((5, 7 * 3 + 3), np.uint8)
    padded[:, : 7 * 3] = rgb[..., ::-1].reshape(5, -1)
    msg = {"height": 5, "width": 7, "encoding": "bgr8", "step": 24, "data": padded.tobytes()}
    np.testing.assert_array_equal(codecs.decode_image(msg), rgb)
    mono = {"height": 5, "width": 7, "encoding": "mono8", "step": 7, "data": rgb[..., 0].tobytes()}
    np.testing.assert_array_equal(codecs.decode_image(mono), np.repeat(rgb[..., :1], 3, axis=-1))
    with pytest.raises(ValueError, match="16UC1"):
        codecs.decode_image({"height": 1, "width": 1, "encoding": "16UC1", "data": b"\0\0"})
    with pytest.raises(ValueError, match="bytes"):
        codecs.decode_image({"height": 5, "width": 7, "encoding": "rgb8", "step": 21, "data": b"\0" * 10})
    with pytest.raises(ValueError, match="uint8"):
        codecs.encode_image(rgb.astype(np.float32))


def test_compressed_png_exact_and_jpeg_close():
    rgb = smooth_rgb()
    png = via_json(codecs.encode_compressed_image(rgb, 1.0, fmt="png"))
    np.testing.assert_array_equal(codecs.decode_compressed_image(png), rgb)
    jpeg = via_json(codecs.encode_compressed_image(rgb, 1.0, fmt="jpeg", quality=95))
    decoded = codecs.decode_compressed_image(jpeg)
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - rgb).mean() < 3.0  # JPEG is lossy: close, not equal
    # The same bytes decode the same whether they arrive as base64 (rosbridge), bytes (rclpy) or an array (rosbags).
    raw = base64.b64decode(jpeg["data"])
    for data in (raw, np.frombuffer(raw, np.uint8), list(raw)):
        np.testing.assert_array_equal(codecs.decode_compressed_image({"format": "jpeg", "data": data}), decoded)
    with pytest.raises(ValueError, match="could not be decoded"):
        codecs.decode_compressed_image({"format": "jpeg", "data": b"not a jpeg"})


def test_string_and_pose_round_trip():
    assert codecs.decode_string(via_json(codecs.encode_string("pick up the cup ✓"))) == "pick up the cup ✓"
    pose = [0.1, -0.2, 0.3, 0.0, 0.0, 0.7071067811865476, 0.7071067811865476]
    np.testing.assert_array_equal(
        codecs.decode_pose_stamped(via_json(codecs.encode_pose_stamped(pose, "base", 1.0))), pose
    )


ACTION_CASES = {
    "std_msgs/Float64MultiArray": ActionConfig(type="std_msgs/Float64MultiArray", low=[-1] * 4, high=[1] * 4),
    "trajectory_msgs/JointTrajectory": ActionConfig(
        type="trajectory_msgs/JointTrajectory",
        joints=["j1", "j2", "j3"],
        low=[-1] * 3,
        high=[1] * 3,
        time_from_start_s=0.25,
    ),
    "geometry_msgs/TwistStamped": ActionConfig(
        type="geometry_msgs/TwistStamped", kind="velocity", frame_id="tool0", low=[-1] * 6, high=[1] * 6
    ),
}


@pytest.mark.parametrize("msg_type", sorted(ACTION_CASES))
@pytest.mark.parametrize("ros_version", [1, 2])
def test_action_codecs_round_trip_exact(msg_type, ros_version):
    cfg = ACTION_CASES[msg_type]
    action = np.random.default_rng(2).uniform(-1, 1, cfg.dim)
    msg = via_json(codecs.encode_action(action, cfg, 10.5, period_s=1 / 15, ros_version=ros_version))
    np.testing.assert_array_equal(codecs.decode_action(msg, cfg), action)
    if msg_type == "trajectory_msgs/JointTrajectory":
        assert msg["joint_names"] == cfg.joints
        assert codecs.stamp_to_sec(msg["points"][0]["time_from_start"]) == 0.25
        assert codecs.header_stamp(msg) is None  # zero stamp: the controller starts the point now
    if msg_type == "geometry_msgs/TwistStamped":
        assert msg["header"]["frame_id"] == "tool0" and codecs.header_stamp(msg) == 10.5


def test_joint_trajectory_time_defaults_to_one_period_and_reorders_on_decode():
    cfg = ActionConfig(type="trajectory_msgs/JointTrajectory", joints=["a", "b"], low=[-1, -1], high=[1, 1])
    msg = codecs.encode_action(np.array([0.1, 0.2]), cfg, None, period_s=0.1)
    assert abs(codecs.stamp_to_sec(msg["points"][0]["time_from_start"]) - 0.1) < 1e-9
    swapped = dict(msg, joint_names=["b", "a"])
    np.testing.assert_array_equal(codecs.decode_joint_trajectory(swapped, ["a", "b"]), [0.2, 0.1])
    with pytest.raises(ValueError, match="positions"):
        codecs.encode_joint_trajectory([0.1], ["a", "b"], 0.1)


def test_type_names_normalise():
    assert normalize_type("sensor_msgs/msg/CompressedImage") == "sensor_msgs/CompressedImage"
    assert normalize_type("std_msgs/String") == "std_msgs/String"


def test_rosbags_messages_decode_like_rosbridge_ones():
    """A message serialized and deserialized by rosbags (as bags hold it) decodes to the same arrays."""
    pytest.importorskip("rosbags")
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    T = store.types
    stamp = T["builtin_interfaces/msg/Time"](sec=7, nanosec=500_000_000)
    header = T["std_msgs/msg/Header"](stamp=stamp, frame_id="cam")
    rgb = smooth_rgb(6, 8)
    image = T["sensor_msgs/msg/Image"](
        header=header, height=6, width=8, encoding="rgb8", is_bigendian=0, step=24, data=rgb.reshape(-1)
    )
    typ = "sensor_msgs/msg/Image"
    back = codecs.message_to_dict(store.deserialize_cdr(store.serialize_cdr(image, typ), typ))
    assert codecs.header_stamp(back) == 7.5
    np.testing.assert_array_equal(codecs.decode_image(back), rgb)
    js = T["sensor_msgs/msg/JointState"](
        header=header, name=["a", "b"], position=np.array([0.5, -1.5]), velocity=np.zeros(0), effort=np.zeros(0)
    )
    typ = "sensor_msgs/msg/JointState"
    back = codecs.message_to_dict(store.deserialize_cdr(store.serialize_cdr(js, typ), typ))
    np.testing.assert_array_equal(codecs.decode_joint_state(back).position, [0.5, -1.5])
