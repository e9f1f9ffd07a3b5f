"""Numpy <-> ROS message dicts for the observation and action types the bridge speaks.

Messages are plain dicts in the rosbridge v2 JSON shape (`uint8[]` as base64 text, headers as
`{"stamp": {"sec", "nanosec"}, "frame_id"}`). Decoders also accept what rosbags and rclpy hand out once passed
through `message_to_dict` (bytes or numpy arrays for `uint8[]`, ROS 1 `secs`/`nsecs` stamps). Round trips are exact
for every lossless type (JointState, raw Image, PNG, String and the three action types); JPEG is lossy.
Times are float seconds (the robot's clock, usually Unix time).
"""

from __future__ import annotations

import array
import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voltron.ros.config import ActionConfig, StateSource, normalize_type

Msg = dict[str, Any]


# --- time and headers -------------------------------------------------------------------------------------------------
def sec_to_stamp(t: float, ros_version: int = 2) -> Msg:
    sec = int(np.floor(t))
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:  # rounding carried into the next second
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return {"secs": sec, "nsecs": nanosec} if ros_version == 1 else {"sec": sec, "nanosec": nanosec}


def stamp_to_sec(stamp: Any) -> float:
    """A ROS 1 or ROS 2 time (dict or object) as float seconds."""
    if isinstance(stamp, (int, float)):
        return float(stamp)
    get = stamp.get if isinstance(stamp, dict) else lambda key, default=None: getattr(stamp, key, default)
    sec = get("sec", None)
    if sec is None:
        sec = get("secs", 0)
    nanosec = get("nanosec", None)
    if nanosec is None:
        nanosec = get("nsecs", 0)
    return int(sec) + int(nanosec) * 1e-9


def make_header(t: float | None, frame_id: str = "", ros_version: int = 2) -> Msg:
    header: Msg = {"stamp": sec_to_stamp(t or 0.0, ros_version), "frame_id": frame_id}
    if ros_version == 1:
        header["seq"] = 0
    return header


def header_stamp(msg: Msg) -> float | None:
    """The message's header.stamp in seconds, or None when it has no header or a zero stamp (unset)."""
    header = msg.get("header") if isinstance(msg, dict) else None
    if not header or "stamp" not in header:
        return None
    t = stamp_to_sec(header["stamp"])
    return t if t > 0 else None


def as_bytes(data: Any) -> bytes:
    """`uint8[]` as it arrives: base64 text (rosbridge JSON), bytes, numpy/array.array (rosbags, rclpy) or int list."""
    if isinstance(data, str):
        return base64.b64decode(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).tobytes()
    if isinstance(data, array.array):
        return data.tobytes()
    return bytes(bytearray(data))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def message_to_dict(msg: Any) -> Any:
    """A rosbags or rclpy message object as a nested dict in the rosbridge shape (`uint8[]` left as bytes)."""
    if isinstance(msg, dict):
        return msg
    if isinstance(msg, (str, bytes, int, float, bool)) or msg is None:
        return msg
    if isinstance(msg, np.ndarray):
        return msg.tobytes() if msg.dtype == np.uint8 else msg
    if isinstance(msg, array.array):
        return msg.tobytes() if msg.typecode == "B" else np.asarray(msg)
    if isinstance(msg, (list, tuple)):
        return [message_to_dict(item) for item in msg]
    fields = getattr(msg, "__dataclass_fields__", None)  # rosbags messages are dataclasses
    if fields is not None:
        return {name: message_to_dict(getattr(msg, name)) for name in fields if not name.startswith("__")}
    if hasattr(msg, "get_fields_and_field_types"):  # rclpy messages
        return {name: message_to_dict(getattr(msg, name)) for name in msg.get_fields_and_field_types()}
    raise TypeError(f"cannot convert {type(msg).__name__} to a message dict")


# --- observations -----------------------------------------------------------------------------------------------------
@dataclass
class JointStateSample:
    names: list[str]
    position: np.ndarray  # (J,) float64
    velocity: np.ndarray  # (J,) or (0,)
    effort: np.ndarray  # (J,) or (0,)
    stamp: float | None


def encode_joint_state(
    names: Sequence[str],
    position: Sequence[float],
    velocity: Sequence[float] | None = None,
    effort: Sequence[float] | None = None,
    stamp: float | None = None,
    ros_version: int = 2,
) -> Msg:
    return {
        "header": make_header(stamp, "", ros_version),
        "name": list(names),
        "position": [float(v) for v in position],
        "velocity": [float(v) for v in (velocity if velocity is not None else [])],
        "effort": [float(v) for v in (effort if effort is not None else [])],
    }


def decode_joint_state(msg: Msg) -> JointStateSample:
    def vec(key: str) -> np.ndarray:
        return np.asarray(msg.get(key) if msg.get(key) is not None else [], dtype=np.float64)

    return JointStateSample(
        names=list(msg.get("name") or []),
        position=vec("position"),
        velocity=vec("velocity"),
        effort=vec("effort"),
        stamp=header_stamp(msg),
    )


def encode_compressed_image(
    rgb: np.ndarray, stamp: float | None = None, fmt: str = "jpeg", quality: int = 90, ros_version: int = 2
) -> Msg:
    """(H, W, 3) uint8 RGB -> CompressedImage dict (JPEG or PNG, base64 data)."""
    from PIL import Image

    _check_rgb(rgb, "encode_compressed_image")
    buffer = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    elif fmt == "png":
        Image.fromarray(rgb).save(buffer, format="PNG")
    else:
        raise ValueError(f"CompressedImage format {fmt!r} is not supported; expected 'jpeg' or 'png'")
    return {"header": make_header(stamp, "", ros_version), "format": fmt, "data": _b64(buffer.getvalue())}


def decode_compressed_image(msg: Msg) -> np.ndarray:
    """CompressedImage (JPEG or PNG; the format string's colour note is irrelevant once decoded) -> (H, W, 3) RGB."""
    from PIL import Image

    raw = as_bytes(msg["data"])
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:
        raise ValueError(
            f"CompressedImage with format {msg.get('format')!r} ({len(raw)} bytes) could not be decoded: {err}"
        ) from None


# encoding -> (channels, channel order to RGB)
_RAW_ENCODINGS: dict[str, tuple[int, list[int] | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, [2, 1, 0]),
    "rgba8": (4, [0, 1, 2]),
    "bgra8": (4, [2, 1, 0]),
    "mono8": (1, [0, 0, 0]),
}


def encode_image(rgb: np.ndarray, encoding: str = "rgb8", stamp: float | None = None, ros_version: int = 2) -> Msg:
    """(H, W, 3) uint8 RGB -> raw Image dict in rgb8 or bgr8."""
    _check_rgb(rgb, "encode_image")
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encode_image: encoding {encoding!r} is not supported; expected 'rgb8' or 'bgr8'")
    pixels = rgb if encoding == "rgb8" else rgb[..., ::-1]
    height, width = rgb.shape[:2]
    return {
        "header": make_header(stamp, "", ros_version),
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": width * 3,
        "data": _b64(np.ascontiguousarray(pixels).tobytes()),
    }


def decode_image(msg: Msg) -> np.ndarray:
    """Raw Image (rgb8, bgr8, rgba8, bgra8, mono8; rows may be padded to `step`) -> (H, W, 3) uint8 RGB."""
    encoding = msg.get("encoding", "")
    if encoding not in _RAW_ENCODINGS:
        raise ValueError(f"Image encoding {encoding!r} is not supported; expected one of {sorted(_RAW_ENCODINGS)}")
    channels, order = _RAW_ENCODINGS[encoding]
    height, width = int(msg["height"]), int(msg["width"])
    step = int(msg.get("step") or width * channels)
    raw = np.frombuffer(as_bytes(msg["data"]), dtype=np.uint8)
    if raw.size < height * step:
        raise ValueError(
            f"Image {width}x{height} {encoding} with step {step} needs {height * step} bytes, got {raw.size}"
        )
    pixels = raw[: height * step].reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if order is not None:
        pixels = pixels[..., order]
    return np.ascontiguousarray(pixels)


def _check_rgb(rgb: np.ndarray, where: str) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        shape = getattr(rgb, "shape", None)
        raise ValueError(f"{where}: expected an (H, W, 3) uint8 RGB array, got {type(rgb).__name__} {shape}")


def encode_string(text: str) -> Msg:
    return {"data": str(text)}


def decode_string(msg: Msg) -> str:
    return str(msg.get("data", ""))


def encode_pose_stamped(
    pose: Sequence[float], frame_id: str = "", stamp: float | None = None, ros_version: int = 2
) -> Msg:
    """(7,) position xyz + orientation xyzw -> PoseStamped dict."""
    x, y, z, qx, qy, qz, qw = (float(v) for v in pose)
    return {
        "header": make_header(stamp, frame_id, ros_version),
        "pose": {"position": {"x": x, "y": y, "z": z}, "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}},
    }


def decode_pose_stamped(msg: Msg) -> np.ndarray:
    pos, ori = msg["pose"]["position"], msg["pose"]["orientation"]
    return np.array([pos["x"], pos["y"], pos["z"], ori["x"], ori["y"], ori["z"], ori["w"]], dtype=np.float64)


IMAGE_DECODERS: dict[str, Callable[[Msg], np.ndarray]] = {
    "sensor_msgs/CompressedImage": decode_compressed_image,
    "sensor_msgs/Image": decode_image,
}


def decode_camera(msg: Msg, msg_type: str) -> np.ndarray:
    return IMAGE_DECODERS[normalize_type(msg_type)](msg)


def _joint_state_features(msg: Msg, source: StateSource) -> np.ndarray:
    sample = decode_joint_state(msg)
    if source.joints:
        index = {name: i for i, name in enumerate(sample.names)}
        missing = [name for name in source.joints if name not in index]
        if missing:
            raise KeyError(f"JointState on {source.topic} lacks joints {missing}; it has {sample.names}")
        picks = [index[name] for name in source.joints]
    else:
        picks = list(range(len(sample.position)))
    parts = []
    for fld in source.fields:
        values = getattr(sample, fld)
        if values.size < len(sample.names):
            raise KeyError(
                f"JointState on {source.topic} has {values.size} {fld} values for {len(sample.names)} joints"
            )
        parts.append(values[picks])
    return np.concatenate(parts) if parts else np.zeros(0)


STATE_DECODERS: dict[str, Callable[[Msg, StateSource], np.ndarray]] = {
    "sensor_msgs/JointState": _joint_state_features,
    "geometry_msgs/PoseStamped": lambda msg, source: decode_pose_stamped(msg),
}


def decode_state(msg: Msg, source: StateSource) -> np.ndarray:
    """One state source's share of the proprio vector, float64."""
    return STATE_DECODERS[normalize_type(source.type)](msg, source)


def joint_positions(msg: Msg, joints: Sequence[str]) -> np.ndarray | None:
    """Positions of `joints` from a JointState dict, or None if any is missing."""
    sample = decode_joint_state(msg)
    index = {name: i for i, name in enumerate(sample.names)}
    if any(name not in index for name in joints) or sample.position.size < len(sample.names):
        return None
    return sample.position[[index[name] for name in joints]]


# --- actions ----------------------------------------------------------------------------------------------------------
def encode_float64_multi_array(values: Sequence[float]) -> Msg:
    data = [float(v) for v in values]
    return {"layout": {"dim": [{"label": "", "size": len(data), "stride": len(data)}], "data_offset": 0}, "data": data}


def decode_float64_multi_array(msg: Msg) -> np.ndarray:
    offset = int((msg.get("layout") or {}).get("data_offset", 0) or 0)
    return np.asarray(msg["data"], dtype=np.float64)[offset:]


def encode_joint_trajectory(
    positions: Sequence[float],
    joint_names: Sequence[str],
    time_from_start_s: float,
    stamp: float | None = None,
    ros_version: int = 2,
) -> Msg:
    """One-point trajectory. A zero header stamp (the default) tells ros2_control's controller to start it now."""
    if len(positions) != len(joint_names):
        raise ValueError(
            f"JointTrajectory: {len(positions)} positions for {len(joint_names)} joints {list(joint_names)}"
        )
    return {
        "header": make_header(stamp, "", ros_version),
        "joint_names": list(joint_names),
        "points": [
            {
                "positions": [float(v) for v in positions],
                "velocities": [],
                "accelerations": [],
                "effort": [],
                "time_from_start": sec_to_stamp(time_from_start_s, ros_version),
            }
        ],
    }


def decode_joint_trajectory(msg: Msg, joints: Sequence[str] | None = None) -> np.ndarray:
    """The first point's positions, reordered to `joints` when given."""
    points = msg.get("points") or []
    if not points:
        raise ValueError("JointTrajectory has no points")
    positions = np.asarray(points[0]["positions"], dtype=np.float64)
    if not joints:
        return positions
    index = {name: i for i, name in enumerate(msg.get("joint_names") or [])}
    missing = [name for name in joints if name not in index]
    if missing:
        raise KeyError(f"JointTrajectory lacks joints {missing}; it names {msg.get('joint_names')}")
    return positions[[index[name] for name in joints]]


def encode_twist_stamped(
    twist: Sequence[float], frame_id: str = "", stamp: float | None = None, ros_version: int = 2
) -> Msg:
    """(6,) linear xyz + angular xyz -> TwistStamped dict."""
    vx, vy, vz, wx, wy, wz = (float(v) for v in twist)
    return {
        "header": make_header(stamp, frame_id, ros_version),
        "twist": {"linear": {"x": vx, "y": vy, "z": vz}, "angular": {"x": wx, "y": wy, "z": wz}},
    }


def decode_twist_stamped(msg: Msg) -> np.ndarray:
    lin, ang = msg["twist"]["linear"], msg["twist"]["angular"]
    return np.array([lin["x"], lin["y"], lin["z"], ang["x"], ang["y"], ang["z"]], dtype=np.float64)


@dataclass(frozen=True)
class ActionCodec:
    # encode(action (A,), config, stamp, control period s, ros_version) -> message dict
    encode: Callable[[np.ndarray, ActionConfig, float | None, float, int], Msg]
    # decode(message dict, config) -> action (A,) float64
    decode: Callable[[Msg, ActionConfig], np.ndarray]


ACTION_CODECS: dict[str, ActionCodec] = {
    "trajectory_msgs/JointTrajectory": ActionCodec(
        encode=lambda a, cfg, stamp, period, rv: encode_joint_trajectory(
            a, cfg.joints, cfg.time_from_start_s or period, None, rv
        ),
        decode=lambda msg, cfg: decode_joint_trajectory(msg, cfg.joints),
    ),
    "std_msgs/Float64MultiArray": ActionCodec(
        encode=lambda a, cfg, stamp, period, rv: encode_float64_multi_array(a),
        decode=lambda msg, cfg: decode_float64_multi_array(msg),
    ),
    "geometry_msgs/TwistStamped": ActionCodec(
        encode=lambda a, cfg, stamp, period, rv: encode_twist_stamped(a, cfg.frame_id, stamp, rv),
        decode=lambda msg, cfg: decode_twist_stamped(msg),
    ),
}


def encode_action(
    action: np.ndarray, cfg: ActionConfig, stamp: float | None, period_s: float, ros_version: int = 2
) -> Msg:
    return ACTION_CODECS[normalize_type(cfg.type)].encode(
        np.asarray(action, dtype=np.float64), cfg, stamp, period_s, ros_version
    )


def decode_action(msg: Msg, cfg: ActionConfig) -> np.ndarray:
    return ACTION_CODECS[normalize_type(cfg.type)].decode(msg, cfg)
