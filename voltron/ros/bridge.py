"""The `RobotBridge` interface (connect, get_observation, send_action, disconnect) and the backend registry.

A backend only moves messages: it feeds every received message dict into an `ObservationBuffer` (latest per topic,
from any thread) and publishes encoded commands. Decoding, the topic -> feature map and timestamps are shared here,
so every backend hands the server the same timestamped `Observation`.
"""

from __future__ import annotations

import importlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voltron.errors import MissingDependency
from voltron.ros import codecs
from voltron.ros.config import RobotConfig

# name -> "module:Class"; imported only when a bridge of that kind is made.
BACKENDS: dict[str, str] = {
    "rosbridge": "voltron.ros.rosbridge:RosbridgeBridge",
    "rclpy": "voltron.ros.rclpy_backend:RclpyBridge",
}


@dataclass
class Observation:
    """The latest message of every configured stream, decoded. Stamps are robot-clock seconds.

    A stream's stamp is its `header.stamp`, or the local receipt time for messages without one (String) or with a
    zero stamp. Stream names: `camera:<name>`, `state:<topic>`.
    """

    images: dict[str, np.ndarray]  # camera -> (H, W, 3) uint8 RGB
    proprio: np.ndarray  # (P,) float32
    language: str
    stamps: dict[str, float]
    received: dict[str, float]  # local wall-clock receipt time per stream
    current: np.ndarray | None = None  # measured positions of action.joints, if the state carries them

    def ages(self, now: float | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        return {name: now - stamp for name, stamp in self.stamps.items()}

    def age(self, now: float | None = None) -> float:
        """Age in seconds of the oldest stream (what the watchdog compares with `safety.watchdog_ms`)."""
        ages = self.ages(now)
        return max(ages.values()) if ages else float("inf")

    def newest_image_stamp(self) -> float | None:
        stamps = [t for name, t in self.stamps.items() if name.startswith("camera:")]
        return max(stamps) if stamps else None

    def policy_input(self) -> dict:
        """What `policy.select_action` takes: images, proprio and language."""
        return {"images": self.images, "proprio": self.proprio, "language": self.language}


@dataclass
class _Latest:
    msg: dict
    received: float


@dataclass
class ObservationBuffer:
    """Keeps the latest message per topic (thread-safe) and decodes them on demand in the caller's thread."""

    config: RobotConfig
    _latest: dict[str, _Latest] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _new: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._new = threading.Condition(self._lock)

    def topics(self) -> dict[str, str]:
        """topic -> message type for everything the bridge subscribes to."""
        out = {camera.topic: camera.type for camera in self.config.cameras.values()}
        for source in self.config.state:
            out[source.topic] = source.type
        if self.config.instruction.topic:
            out[self.config.instruction.topic] = "std_msgs/String"
        return out

    def put(self, topic: str, msg: dict, received: float | None = None) -> None:
        with self._new:
            self._latest[topic] = _Latest(msg, time.time() if received is None else received)
            self._new.notify_all()

    def clear(self) -> None:
        with self._lock:
            self._latest.clear()

    def wait_for_all(self, timeout_s: float) -> bool:
        """Block until every required stream has delivered once (False on timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._new:
            while not self._has_required():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._new.wait(remaining)
            return True

    def missing(self) -> list[str]:
        with self._lock:
            return [topic for topic in self._required() if topic not in self._latest]

    def _required(self) -> list[str]:
        return [c.topic for c in self.config.cameras.values()] + [s.topic for s in self.config.state]

    def _has_required(self) -> bool:
        return all(topic in self._latest for topic in self._required())

    def build(self) -> Observation | None:
        """Decode the latest messages into an Observation; None until every camera and state stream has one."""
        with self._lock:
            if not self._has_required():
                return None
            latest = dict(self._latest)
        cfg = self.config
        images, stamps, received = {}, {}, {}
        for name, camera in cfg.cameras.items():
            item = latest[camera.topic]
            images[name] = codecs.decode_camera(item.msg, camera.type)
            stamps[f"camera:{name}"] = codecs.header_stamp(item.msg) or item.received
            received[f"camera:{name}"] = item.received
        parts = []
        current = None
        for source in cfg.state:
            item = latest[source.topic]
            parts.append(codecs.decode_state(item.msg, source))
            stamps[f"state:{source.topic}"] = codecs.header_stamp(item.msg) or item.received
            received[f"state:{source.topic}"] = item.received
            if current is None and cfg.action.joints and source.type == "sensor_msgs/JointState":
                current = codecs.joint_positions(item.msg, cfg.action.joints)
        proprio = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        language = cfg.instruction.default
        if cfg.instruction.topic and cfg.instruction.topic in latest:
            language = codecs.decode_string(latest[cfg.instruction.topic].msg) or language
        return Observation(images, proprio, language, stamps, received, current)


class RobotBridge(ABC):
    """Talks to one robot. Use as a context manager: `with make_bridge(cfg) as bridge: ...`."""

    def __init__(self, config: RobotConfig):
        self.config = config
        self.buffer = ObservationBuffer(config)

    # --- what a backend implements ------------------------------------------------------------------------------------
    @abstractmethod
    def connect(self) -> None:
        """Open the connections and subscribe; raises ConnectionError naming the endpoint on failure."""

    @abstractmethod
    def disconnect(self) -> None:
        """Close everything; safe to call twice."""

    @property
    @abstractmethod
    def is_connected(self) -> bool:
        """True while both the observation and the control channel are up."""

    @abstractmethod
    def _publish_command(self, msg: dict) -> bool:
        """Send one command now, or drop it (return False): never queue it for later delivery."""

    @abstractmethod
    def serve_estop(self, on_latch: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        """Advertise the soft e-stop and reset services (std_srvs/Trigger) named in `config.estop`."""

    @abstractmethod
    def call_robot_estop(self) -> bool:
        """Call the robot's own stop service (`config.estop.robot_service`) without blocking; False if none."""

    # --- shared -------------------------------------------------------------------------------------------------------
    def get_observation(self) -> Observation | None:
        """The latest observation, or None until every camera and state stream has delivered once."""
        return self.buffer.build()

    def wait_for_observation(self, timeout_s: float) -> Observation:
        if not self.buffer.wait_for_all(timeout_s):
            raise TimeoutError(
                f"no message within {timeout_s:.1f} s on {self.buffer.missing()} "
                f"(robot {self.config.name}, {self.config.connection.host}:{self.config.connection.port})"
            )
        obs = self.get_observation()
        assert obs is not None
        return obs

    def send_action(self, action: np.ndarray, period_s: float) -> bool:
        """Encode (per `config.action.type`) and send one command; False if it was dropped (not connected)."""
        msg = codecs.encode_action(
            action, self.config.action, time.time(), period_s, self.config.connection.ros_version
        )
        return self._publish_command(msg)

    def __enter__(self) -> RobotBridge:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()


def make_bridge(config: RobotConfig, backend: str | None = None) -> RobotBridge:
    """Build the bridge named by `backend` (default: `config.backend`); not connected yet."""
    name = backend or config.backend
    if name not in BACKENDS:
        raise ValueError(f"robot {config.name}: backend {name!r} is unknown; expected one of {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        extra = "ros-native" if name == "rclpy" else "ros"
        raise MissingDependency(
            f"the {name} backend needs the [{extra}] extra (pip install 'voltron[{extra}]'): {err}"
        ) from err
    return getattr(module, class_name)(config)
