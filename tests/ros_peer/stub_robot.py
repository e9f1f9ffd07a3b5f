"""A stub ROS 2 robot for the integration tests: publishes joint states and JPEG images, follows commands, has /estop.

Runs under `.venv-ros` (the ros-jazzy-* wheels), never in the main venv. It is a real rclpy node on a real DDS
domain: the rosbridge server discovers it like any robot driver.

Behaviour:
- publishes `sensor_msgs/JointState` on --joint-topic at --joint-hz; the joints track the last command with a
  first-order lag (a crude position controller), so a policy closing the loop sees its effect;
- publishes the bytes of --jpeg as `sensor_msgs/CompressedImage` (format "jpeg") on --image-topic at --image-hz;
- subscribes to --command-topic (`std_msgs/Float64MultiArray` of joint targets, or `geometry_msgs/TwistStamped`)
  and appends each command to --record as one JSON line {"t": wall time, "data": [...]};
- serves --estop-service (`std_srvs/Trigger`): records the call, stops following commands, answers success;
- reads control lines on stdin: `pause_images`, `resume_images`, `quit`; acknowledges each with `ACK <line>` and
  the wall time on stdout. Prints `READY` once its publishers, subscriber and service exist.
- exits by itself after --max-seconds, so a leaked stub cannot outlive a test run for long.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time


def _stamp(msg_header, t: float) -> None:
    msg_header.stamp.sec = int(t)
    msg_header.stamp.nanosec = int(round((t - int(t)) * 1e9)) % 1_000_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--joints", type=int, default=3)
    parser.add_argument("--joint-topic", default="/joint_states")
    parser.add_argument("--joint-hz", type=float, default=50.0)
    parser.add_argument("--image-topic", default="/camera/image_raw/compressed")
    parser.add_argument("--image-hz", type=float, default=30.0)
    parser.add_argument("--jpeg", required=True, help="a JPEG file whose bytes are published as the image")
    parser.add_argument("--command-topic", default="/commands")
    parser.add_argument(
        "--command-type",
        default="std_msgs/Float64MultiArray",
        choices=["std_msgs/Float64MultiArray", "geometry_msgs/TwistStamped"],
    )
    parser.add_argument("--estop-service", default="/estop")
    parser.add_argument("--record", required=True, help="JSONL file to append received commands and e-stops to")
    parser.add_argument("--tracking-gain", type=float, default=0.3)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)

    import rclpy
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage, JointState
    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import Trigger

    with open(args.jpeg, "rb") as handle:
        jpeg = handle.read()

    rclpy.init()
    node = rclpy.create_node("voltron_stub_robot")
    names = [f"joint{i + 1}" for i in range(args.joints)]
    position = [0.0] * args.joints
    target = [0.0] * args.joints
    state = {"images": True, "estopped": False, "quit": False}
    lock = threading.Lock()
    record = open(args.record, "a", buffering=1)  # line-buffered: the test reads it while we run

    joint_pub = node.create_publisher(JointState, args.joint_topic, 10)
    image_pub = node.create_publisher(CompressedImage, args.image_topic, 1)

    def on_command(msg) -> None:
        now = time.time()
        if args.command_type == "std_msgs/Float64MultiArray":
            data = list(msg.data)
        else:
            lin, ang = msg.twist.linear, msg.twist.angular
            data = [lin.x, lin.y, lin.z, ang.x, ang.y, ang.z]
        with lock:
            record.write(json.dumps({"t": now, "kind": "command", "data": data}) + "\n")
            if not state["estopped"] and args.command_type == "std_msgs/Float64MultiArray":
                target[: len(data)] = data[: args.joints]

    command_cls = Float64MultiArray if args.command_type == "std_msgs/Float64MultiArray" else TwistStamped
    node.create_subscription(command_cls, args.command_topic, on_command, 10)

    def on_estop(request, response):
        with lock:
            state["estopped"] = True
            record.write(json.dumps({"t": time.time(), "kind": "estop"}) + "\n")
        response.success = True
        response.message = "stub robot stopped"
        return response

    node.create_service(Trigger, args.estop_service, on_estop)

    def publish_joints() -> None:
        now = time.time()
        with lock:
            for i in range(args.joints):
                position[i] += args.tracking_gain * (target[i] - position[i])
            msg = JointState()
            _stamp(msg.header, now)
            msg.name = names
            msg.position = list(position)
            msg.velocity = [0.0] * args.joints
        joint_pub.publish(msg)

    def publish_image() -> None:
        if not state["images"]:
            return
        msg = CompressedImage()
        _stamp(msg.header, time.time())
        msg.header.frame_id = "camera"
        msg.format = "jpeg"
        msg.data = jpeg
        image_pub.publish(msg)

    node.create_timer(1.0 / args.joint_hz, publish_joints)
    node.create_timer(1.0 / args.image_hz, publish_image)

    def read_stdin() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "pause_images":
                state["images"] = False
            elif command == "resume_images":
                state["images"] = True
            elif command == "quit":
                state["quit"] = True
            print(f"ACK {command} {time.time():.6f}", flush=True)
            if state["quit"]:
                return
        state["quit"] = True  # stdin closed: the test is gone

    threading.Thread(target=read_stdin, daemon=True).start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print("READY", flush=True)
    deadline = time.monotonic() + args.max_seconds
    try:
        while not state["quit"] and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        record.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
