"""The default backend: the rosbridge v2 protocol through roslibpy, for ROS 1 and ROS 2 robots alike.

Two WebSocket connections to the robot's rosbridge server:
- *sensor*: every observation subscription, with `queue_length=1` so the server drops stale frames instead of
  queueing them behind us;
- *control*: the command topic and the e-stop services. It is a separate connection so that image traffic can
  never starve a stop: with one connection a service call timed out behind a raw-image flood (ros.md §2).

Both reconnect on their own with exponential backoff (`connection.reconnect_initial_s` .. `reconnect_max_s`) and
re-subscribe / re-advertise on every reconnection. While a connection is down, observations go stale, the safety
layer's watchdog holds, and `send_action` drops commands rather than letting roslibpy queue them for delivery on
reconnection: a stale command is never sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from voltron.ros.bridge import RobotBridge
from voltron.ros.config import RobotConfig

log = logging.getLogger("voltron.ros.rosbridge")


class RosbridgeBridge(RobotBridge):
    def __init__(self, config: RobotConfig):
        super().__init__(config)
        self._sensor = None  # roslibpy.Ros
        self._control = None  # roslibpy.Ros
        self._estop_handlers: dict[str, Callable[[dict], tuple[bool, str]]] = {}
        self._ids = 0
        self._ids_lock = threading.Lock()
        self.reconnects = {"sensor": 0, "control": 0}
        self._closing = False

    # --- connection -------------------------------------------------------------------------------------------------
    def _next_id(self, kind: str) -> str:
        with self._ids_lock:
            self._ids += 1
            return f"voltron:{kind}:{self._ids}"

    def _open(self, role: str, on_ready: Callable[[object], None], handlers: dict[str, Callable] | None = None):
        import roslibpy

        conn = self.config.connection
        # Ros() already starts connecting: once the twisted reactor runs (after the first connection of this process),
        # the socket can open before the handlers below exist, so `ready` must also catch a connection already open.
        ros = roslibpy.Ros(host=conn.host, port=conn.port)
        factory = ros.factory
        # Per-connection backoff (instance attributes shadow twisted's ReconnectingClientFactory class defaults).
        factory.initialDelay = factory.delay = conn.reconnect_initial_s
        factory.maxDelay = conn.reconnect_max_s
        ready_lock = threading.Lock()
        handled = {"proto": None}  # the protocol (one per WebSocket connection) whose ready was handled last

        def ready(proto) -> None:
            # Runs once per connection even though both registrations below may deliver the same one.
            with ready_lock:
                if proto is handled["proto"]:
                    return
                if handled["proto"] is not None:
                    self.reconnects[role] += 1
                    log.warning("%s connection to %s:%s re-established", role, conn.host, conn.port)
                handled["proto"] = proto
                on_ready(proto)  # only queues frames on the reactor: never blocks while holding the lock

        def closed(_proto) -> None:
            if not self._closing:
                log.warning("%s connection to %s:%s lost; reconnecting with backoff", role, conn.host, conn.port)

        ros.on("close", closed)
        for event, handler in (handlers or {}).items():  # before `ready`: messages follow the subscription at once
            ros.on(event, handler)
        ros.on("ready", ready)  # every connection that opens from now on, reconnections included
        # The connection that opened before the line above: its ready event has already been emitted, unseen.
        # factory.on_ready calls at once when a connection is up, else waits for the next ready event. It gets its own
        # callable: roslibpy keys listeners by function, so once("ready", ready) would replace the handler above
        # and then remove it after one call, and no reconnection would re-subscribe.
        factory.on_ready(lambda proto: ready(proto))
        try:
            ros.run(timeout=conn.connect_timeout_s)
        except Exception as err:  # roslibpy raises RosTimeoutError; stop its reconnect loop before giving up
            factory.stopTrying()
            raise ConnectionError(
                f"robot {self.config.name}: no rosbridge server at ws://{conn.host}:{conn.port} "
                f"within {conn.connect_timeout_s:.0f} s ({role} connection): {err}"
            ) from None
        return ros

    def connect(self) -> None:
        import roslibpy

        self._closing = False
        self._roslibpy = roslibpy
        topics = self.buffer.topics()
        # roslibpy emits each incoming `publish` op under its topic name, on every connection. The handler runs in the
        # transport thread: it only stores the dict; decoding happens in get_observation's thread.
        handlers = {topic: (lambda msg, topic=topic: self.buffer.put(topic, msg)) for topic in topics}

        def sensor_ready(proto) -> None:
            for topic, msg_type in topics.items():
                proto.send_ros_message(
                    roslibpy.Message(
                        {
                            "op": "subscribe",
                            "id": self._next_id("subscribe"),
                            "topic": topic,
                            "type": msg_type,
                            "queue_length": 1,
                            "throttle_rate": 0,
                            "compression": "none",
                        }
                    )
                )

        action = self.config.action

        def control_ready(proto) -> None:
            proto.send_ros_message(
                roslibpy.Message(
                    {
                        "op": "advertise",
                        "id": self._next_id("advertise"),
                        "topic": action.topic,
                        "type": action.type,
                        "latch": False,
                        "queue_size": 1,
                    }
                )
            )
            self._advertise_services(proto)

        self._sensor = self._open("sensor", sensor_ready, handlers)
        try:
            self._control = self._open("control", control_ready)
        except ConnectionError:
            self._close(self._sensor)
            self._sensor = None
            raise

    def disconnect(self) -> None:
        self._closing = True
        for attr in ("_control", "_sensor"):
            ros = getattr(self, attr)
            if ros is not None:
                self._close(ros)
                setattr(self, attr, None)

    @staticmethod
    def _close(ros) -> None:
        ros.factory.stopTrying()
        try:
            if ros.is_connected:
                ros.close(timeout=2.0)
        except Exception as err:  # closing a half-dead socket must not mask the caller's own error
            log.warning("closing rosbridge connection: %s", err)

    @property
    def is_connected(self) -> bool:
        return bool(self._sensor and self._control and self._sensor.is_connected and self._control.is_connected)

    # --- commands ---------------------------------------------------------------------------------------------------
    def _publish_command(self, msg: dict) -> bool:
        ros = self._control
        if ros is None:
            return False
        # No is_connected pre-check: it could pass just before a drop, so the guard below is the one mechanism.
        frame = self._roslibpy.Message(
            {"op": "publish", "id": self._next_id("publish"), "topic": self.config.action.topic, "msg": msg}
        )
        state = {"returned": False, "sent": False}

        def send(proto) -> None:
            # roslibpy runs this at once when connected, or queues it until the next connection. A queued command
            # would be stale by the time it went out, so only the immediate call sends; queued ones do nothing.
            if not state["returned"]:
                proto.send_ros_message(frame)
                state["sent"] = True

        # factory.on_ready (what Ros.send_on_ready uses) passes the protocol; Ros.on_ready would drop it.
        ros.factory.on_ready(send)
        state["returned"] = True
        return state["sent"]

    # --- e-stop -----------------------------------------------------------------------------------------------------
    def serve_estop(self, on_latch: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        if self._control is None:
            raise RuntimeError("serve_estop: connect() first")
        estop = self.config.estop

        def latch(_request: dict) -> tuple[bool, str]:
            on_latch(f"{estop.service} called")
            return True, "policy e-stop latched; call " + estop.reset_service + " to resume"

        def reset(_request: dict) -> tuple[bool, str]:
            on_reset()
            return True, "policy e-stop reset"

        for service, handler in ((estop.service, latch), (estop.reset_service, reset)):
            self._estop_handlers[service] = handler
            self._control.on(service, self._service_handler(service, handler))
        # Advertise now on the live connection; control_ready re-advertises after every reconnection.
        self._control.factory.on_ready(self._advertise_services)

    def _advertise_services(self, proto) -> None:
        for service in list(self._estop_handlers):
            proto.send_ros_message(
                self._roslibpy.Message({"op": "advertise_service", "type": "std_srvs/Trigger", "service": service})
            )

    def _service_handler(self, service: str, handler: Callable[[dict], tuple[bool, str]]):
        def on_request(request: dict) -> None:
            try:
                success, message = handler(request.get("args") or {})
            except Exception as err:  # answer the caller rather than leave it waiting for a timeout
                log.exception("service %s failed", service)
                success, message = False, str(err)
            response = {
                "op": "service_response",
                "service": service,
                "values": {"success": success, "message": message},
                "result": True,
            }
            if "id" in request:
                response["id"] = request["id"]
            self._control.send_on_ready(self._roslibpy.Message(response))

        return on_request

    def call_robot_estop(self) -> bool:
        name = self.config.estop.robot_service
        if not name or self._control is None or not self._control.is_connected:
            return False
        roslibpy = self._roslibpy

        def done(response) -> None:
            log.warning("robot stop service %s answered %s", name, dict(response))

        def failed(error) -> None:
            log.error("robot stop service %s failed: %s", name, error)

        roslibpy.Service(self._control, name, "std_srvs/Trigger").call(roslibpy.ServiceRequest({}), done, failed)
        return True
