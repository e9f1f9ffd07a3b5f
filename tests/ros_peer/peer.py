"""Start and stop the loopback ROS peer (rosbridge-server-rs + the rclpy stub robot) from the main venv.

Both run from `.venv-ros` (scripts/setup_ros_peer.sh) as subprocesses: the server binds 127.0.0.1 only, both share a
ROS_DOMAIN_ID unique to this peer, and DDS discovery is pinned to localhost. `PeerUnavailable` says why the peer
could not start (tests skip with that reason). Loaded by path from tests and bench/ros_latency.py.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
_domain_counter = itertools.count()


class PeerUnavailable(RuntimeError):
    """The ROS peer cannot run here; the message says why and how to fix it."""


def ros_python(repo: Path = REPO) -> Path:
    python = Path(os.environ.get("VOLTRON_ROS_VENV", repo / ".venv-ros")) / "bin" / "python"
    if not python.is_file():
        raise PeerUnavailable(f"{python} not found: run scripts/setup_ros_peer.sh to create the ROS peer venv")
    return python


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique_domain_id() -> int:
    # 1..100, spread by pid so concurrent test processes rarely share a domain.
    return 1 + (os.getpid() * 7 + next(_domain_counter)) % 100


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RosPeer:
    """rosbridge server + stub robot. Use as a context manager; `stop()` always kills both."""

    def __init__(
        self,
        workdir: Path,
        *,
        jpeg: Path,
        joints: int = 3,
        image_hz: float = 30.0,
        joint_hz: float = 50.0,
        command_topic: str = "/commands",
        image_topic: str = "/camera/image_raw/compressed",
        max_seconds: float = 120.0,
        start_timeout_s: float = 45.0,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python = ros_python()
        self.port = free_port()
        self.domain_id = unique_domain_id()
        self.record = self.workdir / "stub_record.jsonl"
        self.stub_args = [
            "--jpeg",
            str(jpeg),
            "--record",
            str(self.record),
            "--joints",
            str(joints),
            "--image-hz",
            str(image_hz),
            "--joint-hz",
            str(joint_hz),
            "--command-topic",
            command_topic,
            "--image-topic",
            image_topic,
            "--max-seconds",
            str(max_seconds),
        ]
        self.max_seconds = max_seconds
        self.joint_topic, self.image_topic = "/joint_states", image_topic
        self.start_timeout_s = start_timeout_s
        self.stub: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        self._stub_lines: queue.Queue[str] = queue.Queue()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "AMENT_", "RMW_", "_ROS_WHEELS"))}
        env.update(ROS_DOMAIN_ID=str(self.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        env.pop("LD_PRELOAD", None)
        env.pop("PYTHONPATH", None)
        return env

    def start(self) -> RosPeer:
        self.record.write_text("")
        stub_log = open(self.workdir / "stub.stderr", "w")
        self.stub = subprocess.Popen(
            [str(self.python), str(HERE / "stub_robot.py"), *self.stub_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stub_log,
            text=True,
            env=self.env(),
            cwd=self.workdir,
        )
        threading.Thread(target=self._read_stub, daemon=True).start()
        self._launch_server("w")
        deadline = time.monotonic() + self.start_timeout_s
        try:
            self._expect_stub("READY", deadline)
            self.wait_server(deadline)
            self.wait_for_data(deadline)
        except PeerUnavailable:
            self.stop()
            raise
        return self

    def wait_server(self, deadline: float) -> None:
        while not _port_open(self.port):
            if self.server.poll() is not None:
                raise PeerUnavailable(f"rosbridge server exited with {self.server.returncode}: {self.logs()}")
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"rosbridge server not listening on 127.0.0.1:{self.port}: {self.logs()}")
            time.sleep(0.1)

    def wait_for_data(self, deadline: float) -> None:
        """Block until the stub's joint states and images arrive through the server (DDS discovery is slow under
        load); a plain roslibpy client, independent of voltron's bridge."""
        import threading

        import roslibpy

        got = {self.joint_topic: threading.Event(), self.image_topic: threading.Event()}
        ros = roslibpy.Ros("127.0.0.1", self.port)
        try:
            ros.run(timeout=max(1.0, deadline - time.monotonic()))
            topics = []
            for topic, msg_type in (
                (self.joint_topic, "sensor_msgs/JointState"),
                (self.image_topic, "sensor_msgs/CompressedImage"),
            ):
                listener = roslibpy.Topic(ros, topic, msg_type, queue_length=1)
                listener.subscribe(lambda _msg, topic=topic: got[topic].set())
                topics.append(listener)
            for topic, event in got.items():
                if not event.wait(max(0.0, deadline - time.monotonic())):
                    raise PeerUnavailable(f"no {topic} through the rosbridge server in time: {self.logs()}")
            for listener in topics:
                listener.unsubscribe()
        except PeerUnavailable:
            raise
        except Exception as err:
            raise PeerUnavailable(f"cannot reach the rosbridge server on 127.0.0.1:{self.port}: {err}") from None
        finally:
            ros.factory.stopTrying()
            try:
                ros.close(timeout=2.0)
            except Exception:
                pass

    def _read_stub(self) -> None:
        for line in self.stub.stdout:
            self._stub_lines.put(line.strip())

    def _expect_stub(self, prefix: str, deadline: float) -> str:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerUnavailable(f"stub robot did not say {prefix!r} in time: {self.logs()}")
            try:
                line = self._stub_lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.stub.poll() is not None:
                    raise PeerUnavailable(f"stub robot exited with {self.stub.returncode}: {self.logs()}") from None
                continue
            if line.startswith(prefix):
                return line

    def tell_stub(self, command: str, timeout_s: float = 5.0) -> float:
        """Send a control line (pause_images, resume_images) and return the stub's wall time of acting on it."""
        self.stub.stdin.write(command + "\n")
        self.stub.stdin.flush()
        line = self._expect_stub(f"ACK {command}", time.monotonic() + timeout_s)
        return float(line.split()[-1])

    def records(self, kind: str | None = None) -> list[dict]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        out = [json.loads(line) for line in lines if line.strip()]
        return [r for r in out if kind is None or r["kind"] == kind]

    def _launch_server(self, log_mode: str) -> None:
        server_log = open(self.workdir / "rosbridge.log", log_mode)
        self.server = subprocess.Popen(
            [str(self.python), str(HERE / "rosbridge_server.py"), "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.workdir,
        )

    def restart_server(self) -> None:
        """Kill and restart the rosbridge server on the same port (a connection loss for the bridge)."""
        self.kill_server()
        self._launch_server("a")
        self.wait_server(time.monotonic() + self.start_timeout_s)

    def kill_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait(timeout=10)

    def logs(self, limit: int = 1500) -> str:
        parts = []
        for name in ("stub.stderr", "rosbridge.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"[{name}] " + path.read_text()[-limit:])
        return " ".join(parts) or "(no output)"

    def stop(self) -> None:
        for proc in (self.stub, self.server):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self.stub is not None and self.stub.stdin:
            try:
                self.stub.stdin.close()
            except OSError:
                pass

    def __enter__(self) -> RosPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def write_test_jpeg(path: Path, height: int = 96, width: int = 128, quality: int = 85) -> Path:
    """A deterministic JPEG for the stub to publish (made with Pillow in the main venv)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 2) % 256, (yy * 2) % 256, ((xx + yy) * 3) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG", quality=quality)
    return path
