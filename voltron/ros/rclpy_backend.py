"""The optional native ROS 2 backend: rclpy from the `ros-jazzy-*` PyPI wheels (the `[ros-native]` extra).

For ROS 2 robots on the same LAN, without a rosbridge server. Imported only when `backend: rclpy` is chosen.
The wheels' bootstrap .pth re-executes Python with their library path, so install them in the venv that runs the
server, and pin DDS discovery as the robot does (ROS_DOMAIN_ID via `connection.domain_id`, and
ROS_AUTOMATIC_DISCOVERY_RANGE). Mirrors the rosbridge backend's split: one node and executor thread for the
observation subscriptions, another for the command publisher and the e-stop services, so image callbacks can never
delay a stop. Observation subscriptions are best effort with depth 1 (compatible with reliable and sensor-data
publishers; only the latest message matters).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable

from voltron.errors import MissingDependency
from voltron.ros import codecs
from voltron.ros.bridge import RobotBridge
from voltron.ros.config import RobotConfig, normalize_type

log = logging.getLogger("voltron.ros.rclpy")


def message_class(msg_type: str, kind: str = "msg"):
    """`sensor_msgs/JointState` -> the rclpy message class (`std_srvs/Trigger` with kind="srv")."""
    package, name = normalize_type(msg_type).split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise MissingDependency(
            f"ROS 2 {kind} type {msg_type} is not installed: pip install ros-jazzy-{package.replace('_', '-')}"
        ) from err


def fill_message(msg, values: dict):
    """Set an rclpy message's fields from a rosbridge-shaped dict (nested messages and message sequences too)."""
    field_types = msg.get_fields_and_field_types()
    for key, value in values.items():
        if key not in field_types:
            raise KeyError(f"{type(msg).__name__} has no field {key!r}; fields are {sorted(field_types)}")
        field_type = field_types[key]
        current = getattr(msg, key)
        if isinstance(value, dict) and hasattr(current, "get_fields_and_field_types"):
            fill_message(current, value)
        elif field_type.startswith("sequence<") and "/" in field_type:
            element = message_class(field_type[len("sequence<") :].rstrip(">").split(",")[0])
            setattr(msg, key, [fill_message(element(), item) for item in value])
        else:
            setattr(msg, key, value)
    return msg


class RclpyBridge(RobotBridge):
    def __init__(self, config: RobotConfig):
        super().__init__(config)
        self._context = None
        self._nodes: dict = {}
        self._executors: list = []
        self._threads: list[threading.Thread] = []
        self._publisher = None
        self._command_cls = None

    def connect(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions

        if self.config.connection.ros_version != 2:
            raise ValueError(f"robot {self.config.name}: the rclpy backend speaks ROS 2 only (connection.ros_version)")
        self._context = rclpy.Context()
        # The server owns SIGINT/SIGTERM (it must send a final hold); rclpy must not install its own handlers.
        rclpy.init(
            context=self._context,
            domain_id=self.config.connection.domain_id,
            signal_handler_options=SignalHandlerOptions.NO,
        )
        sensor = rclpy.create_node("voltron_policy_observations", context=self._context)
        control = rclpy.create_node("voltron_policy_control", context=self._context)
        self._nodes = {"sensor": sensor, "control": control}
        latest_only = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)
        for topic, msg_type in self.buffer.topics().items():
            sensor.create_subscription(
                message_class(msg_type),
                topic,
                lambda msg, topic=topic: self.buffer.put(topic, codecs.message_to_dict(msg)),
                latest_only,
            )
        action = self.config.action
        self._command_cls = message_class(action.type)
        self._publisher = control.create_publisher(
            self._command_cls,
            action.topic,
            QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE),
        )
        for name, node in self._nodes.items():
            executor = SingleThreadedExecutor(context=self._context)
            executor.add_node(node)
            thread = threading.Thread(target=self._spin, args=(executor,), name=f"rclpy-{name}", daemon=True)
            thread.start()
            self._executors.append(executor)
            self._threads.append(thread)

    def _spin(self, executor) -> None:
        import rclpy

        while rclpy.ok(context=self._context):
            try:
                executor.spin_once(timeout_sec=0.05)
            except Exception:  # a shutdown race while disconnecting ends the thread
                if rclpy.ok(context=self._context):
                    log.exception("rclpy executor failed")
                return

    def disconnect(self) -> None:
        if self._context is None:
            return
        import rclpy

        context, self._context = self._context, None
        rclpy.try_shutdown(context=context)
        for thread in self._threads:
            thread.join(timeout=2.0)
        for executor in self._executors:
            executor.shutdown(timeout_sec=1.0)
        for node in self._nodes.values():
            node.destroy_node()
        self._nodes, self._executors, self._threads = {}, [], []

    @property
    def is_connected(self) -> bool:
        # DDS has no connection to lose: a dead robot shows as stale observations, which the watchdog catches.
        import rclpy

        return self._context is not None and rclpy.ok(context=self._context)

    def _publish_command(self, msg: dict) -> bool:
        if not self.is_connected:
            return False
        self._publisher.publish(fill_message(self._command_cls(), msg))
        return True

    def serve_estop(self, on_latch: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        trigger = message_class("std_srvs/Trigger", "srv")
        estop = self.config.estop
        control = self._nodes["control"]

        def latch(_request, response):
            on_latch(f"{estop.service} called")
            response.success, response.message = True, f"policy e-stop latched; call {estop.reset_service} to resume"
            return response

        def reset(_request, response):
            on_reset()
            response.success, response.message = True, "policy e-stop reset"
            return response

        control.create_service(trigger, estop.service, latch)
        control.create_service(trigger, estop.reset_service, reset)

    def call_robot_estop(self) -> bool:
        name = self.config.estop.robot_service
        if not name or not self.is_connected:
            return False
        trigger = message_class("std_srvs/Trigger", "srv")
        client = self._nodes["control"].create_client(trigger, name)
        if not client.service_is_ready():
            log.error("robot stop service %s is not available", name)
            return False
        future = client.call_async(trigger.Request())
        future.add_done_callback(lambda f: log.warning("robot stop service %s answered %s", name, f.result()))
        return True
