"""Robot configs: which ROS topics and types feed which policy features, and the limits that keep the robot safe.

A robot config is a YAML file in `configs/robots/`, decoded into the dataclasses below with draccus, so any field can
be overridden from the command line with a dotted flag (`--safety.watchdog_ms=300`). Units: seconds, radians or
metres as the robot uses them; `*_ms` fields are milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from voltron.config import config_from_dict, config_to_dict, parse_config

# Message types are written `pkg/Type`; `pkg/msg/Type` (ROS 2 / rosbags spelling) is accepted and normalised.
IMAGE_TYPES = ("sensor_msgs/CompressedImage", "sensor_msgs/Image")
STATE_TYPES = ("sensor_msgs/JointState", "geometry_msgs/PoseStamped")
ACTION_TYPES = ("trajectory_msgs/JointTrajectory", "std_msgs/Float64MultiArray", "geometry_msgs/TwistStamped")
JOINT_FIELDS = ("position", "velocity", "effort")


def normalize_type(msg_type: str) -> str:
    """`sensor_msgs/msg/Image` -> `sensor_msgs/Image`; `pkg/Type` is returned unchanged."""
    parts = msg_type.strip("/").split("/")
    if len(parts) == 3 and parts[1] in ("msg", "srv", "action"):
        return f"{parts[0]}/{parts[2]}"
    return "/".join(parts)


@dataclass
class ConnectionConfig:
    """Where the robot's rosbridge server (or, for `rclpy`, the DDS domain) is."""

    host: str = "127.0.0.1"
    port: int = 9090
    # ROS 1 rosbridge uses `secs`/`nsecs` stamps and a `seq` in headers; ROS 2 uses `sec`/`nanosec`.
    ros_version: int = 2
    connect_timeout_s: float = 10.0
    # Reconnection after a lost connection: exponential backoff from the initial delay up to the maximum.
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 5.0
    domain_id: int | None = None  # rclpy backend only: ROS_DOMAIN_ID (None: leave the environment's)


@dataclass
class CameraConfig:
    """One camera stream; the policy sees it as an (H, W, 3) uint8 RGB image under the camera's name."""

    topic: str
    type: str = "sensor_msgs/CompressedImage"  # JPEG by default: raw Image over rosbridge costs ~130 ms per frame


@dataclass
class StateSource:
    """One proprioception stream. The policy's `proprio` vector is the concatenation of all sources, in order.

    JointState: for each field in `fields`, the values of `joints` in that order (all joints in message order if
    `joints` is empty). PoseStamped: position xyz then orientation xyzw (7 values); `joints`/`fields` unused.
    """

    topic: str = "/joint_states"
    type: str = "sensor_msgs/JointState"
    joints: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=lambda: ["position"])


@dataclass
class InstructionConfig:
    """Where the language instruction comes from: a std_msgs/String topic, else `default`."""

    topic: str | None = "/instruction"
    default: str = ""


@dataclass
class ActionConfig:
    """The command the policy's action becomes, and its limits (one value per action component)."""

    topic: str = "/forward_position_controller/commands"
    type: str = "std_msgs/Float64MultiArray"
    # position: absolute targets (joint or Cartesian); velocity: rates (twist, joint velocities).
    kind: Literal["position", "velocity"] = "position"
    joints: list[str] = field(default_factory=list)  # JointTrajectory joint names; also maps `hold: current`
    frame_id: str = ""  # TwistStamped header frame
    time_from_start_s: float = 0.0  # JointTrajectory point time; 0 means one control period
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    max_delta: list[float] | None = None  # largest change per control step, per component (None: no limit)
    # What "hold" sends when the watchdog, the e-stop or a shutdown stops the policy:
    # last: the last command sent (position control keeps its setpoint); zero: all zeros (velocity control);
    # current: the measured positions of `joints`; auto: last for kind=position, zero for kind=velocity.
    hold: Literal["auto", "last", "zero", "current"] = "auto"

    @property
    def dim(self) -> int:
        return len(self.low)

    def hold_mode(self) -> str:
        if self.hold != "auto":
            return self.hold
        return "last" if self.kind == "position" else "zero"


@dataclass
class WorkspaceConfig:
    """A box the end effector must stay in.

    position mode: `action_dims` of the action are absolute positions; they are clipped into [low, high].
    velocity mode: `action_dims` are velocities and `state_dims` of proprio the current position; the velocity is cut
    so that position + velocity * period stays in the box (and points back into it when outside).
    """

    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    action_dims: list[int] = field(default_factory=list)
    mode: Literal["position", "velocity"] = "position"
    state_dims: list[int] = field(default_factory=list)


@dataclass
class SafetyConfig:
    watchdog_ms: float = 200.0  # hold when any observation stream is older than this
    inference_budget_ms: float | None = None  # hold when select_action takes longer (None: one control period)
    workspace: WorkspaceConfig | None = None


@dataclass
class EstopConfig:
    """Soft e-stop. The hardware e-stop stays authoritative; this one stops the policy and latches until reset."""

    service: str = "/voltron/estop"  # std_srvs/Trigger advertised by the server: latches
    reset_service: str = "/voltron/estop_reset"  # std_srvs/Trigger advertised by the server: clears the latch
    robot_service: str | None = None  # the robot's own std_srvs/Trigger stop, called once when the latch trips


@dataclass
class BagConfig:
    """How `ros bag2demos` cuts bags into episodes."""

    # A new episode starts at every message on this topic (any type; its content is not read). For a service,
    # name its recorded event topic (ROS 2 Jazzy records calls on `<service>/_service_event`). None: one per bag.
    split_topic: str | None = None
    split_min_gap_s: float = 0.5  # markers closer than this merge (a service call records several events)
    # A tick whose latest message of a stream is older than this many grid periods is flagged as a gap.
    gap_periods: float = 2.0
    min_steps: int = 2  # drop shorter episodes (reported)


@dataclass
class RobotConfig:
    name: str = "robot"
    backend: str = "rosbridge"
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    cameras: dict[str, CameraConfig] = field(default_factory=dict)
    state: list[StateSource] = field(default_factory=lambda: [StateSource()])
    instruction: InstructionConfig = field(default_factory=InstructionConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    estop: EstopConfig = field(default_factory=EstopConfig)
    bag: BagConfig = field(default_factory=BagConfig)

    def validate(self, source: str = "<robot config>") -> RobotConfig:
        """Normalise message types and check shapes; raises ValueError naming the file, key and value."""
        for name, camera in self.cameras.items():
            camera.type = normalize_type(camera.type)
            _expect(camera.type in IMAGE_TYPES, source, f"cameras.{name}.type", camera.type, IMAGE_TYPES)
        for i, src in enumerate(self.state):
            src.type = normalize_type(src.type)
            _expect(src.type in STATE_TYPES, source, f"state[{i}].type", src.type, STATE_TYPES)
            for fld in src.fields:
                _expect(fld in JOINT_FIELDS, source, f"state[{i}].fields", fld, JOINT_FIELDS)
        act = self.action
        act.type = normalize_type(act.type)
        _expect(act.type in ACTION_TYPES, source, "action.type", act.type, ACTION_TYPES)
        if not act.low or len(act.low) != len(act.high):
            raise ValueError(
                f"{source}: action.low and action.high must be non-empty lists of equal length "
                f"(one limit per action component), got {len(act.low)} and {len(act.high)}"
            )
        bad = [i for i, (lo, hi) in enumerate(zip(act.low, act.high)) if not lo <= hi]
        if bad:
            raise ValueError(f"{source}: action.low > action.high at components {bad}")
        if act.max_delta is not None:
            if len(act.max_delta) != act.dim or any(not d > 0 for d in act.max_delta):
                raise ValueError(f"{source}: action.max_delta must hold {act.dim} positive values, got {act.max_delta}")
        if act.type == "trajectory_msgs/JointTrajectory" and len(act.joints) != act.dim:
            raise ValueError(
                f"{source}: action.joints must name {act.dim} joints for a JointTrajectory, got {act.joints}"
            )
        if act.type == "geometry_msgs/TwistStamped" and act.dim != 6:
            raise ValueError(
                f"{source}: a TwistStamped action has 6 components (linear xyz, angular xyz), got {act.dim}"
            )
        if act.hold_mode() == "current" and not act.joints:
            raise ValueError(f"{source}: action.hold=current needs action.joints to find the measured positions")
        ws = self.safety.workspace
        if ws is not None:
            n = len(ws.action_dims)
            if not n or len(ws.low) != n or len(ws.high) != n:
                raise ValueError(
                    f"{source}: safety.workspace needs equal-length low/high/action_dims, got "
                    f"{len(ws.low)}/{len(ws.high)}/{n}"
                )
            if any(not 0 <= d < act.dim for d in ws.action_dims):
                raise ValueError(f"{source}: safety.workspace.action_dims {ws.action_dims} outside 0..{act.dim - 1}")
            if ws.mode == "velocity" and len(ws.state_dims) != n:
                raise ValueError(f"{source}: safety.workspace.mode=velocity needs {n} state_dims, got {ws.state_dims}")
        if not (self.safety.watchdog_ms > 0 and math.isfinite(self.safety.watchdog_ms)):
            raise ValueError(f"{source}: safety.watchdog_ms must be a positive number, got {self.safety.watchdog_ms}")
        return self


def _expect(ok: bool, source: str, key: str, value: object, allowed: tuple[str, ...]) -> None:
    if not ok:
        raise ValueError(f"{source}: {key} = {value!r} is not supported; expected one of {list(allowed)}")


def load_robot_config(path: str | Path, overrides: list[str] | None = None) -> RobotConfig:
    """Read a robot YAML (with optional dotted overrides such as `--safety.watchdog_ms=300`) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robot config {path} does not exist (see configs/robots/ for examples)")
    return parse_config(RobotConfig, str(path), overrides).validate(str(path))


def robot_config_from_dict(values: dict, source: str = "<dict>") -> RobotConfig:
    return config_from_dict(RobotConfig, values, source).validate(source)


def robot_config_to_dict(cfg: RobotConfig) -> dict:
    return config_to_dict(cfg)


def save_robot_config(cfg: RobotConfig, path: str | Path) -> Path:
    import yaml

    from voltron.io import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(robot_config_to_dict(cfg), sort_keys=False))
