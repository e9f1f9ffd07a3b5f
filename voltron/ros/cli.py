"""`voltron ros serve` and `voltron ros bag2demos`: argparse only here; the work is imported inside the handlers."""

from __future__ import annotations

import argparse

from voltron.config import add_config_option, command_group
from voltron.models.inference_options import add_inference_arguments

ROBOT_CONFIG = "voltron.ros.config:RobotConfig"


def register(subparsers: argparse._SubParsersAction) -> None:
    ros_sub = command_group(subparsers, "ros", "real robots through ROS: serve a policy, convert bags to demos")

    serve = ros_sub.add_parser(
        "serve",
        help="run a policy on a robot at a fixed rate, through the safety layer",
        description="Run a policy checkpoint on a robot at a fixed rate. Dotted overrides set robot config "
        "fields, e.g. --safety.watchdog_ms=300 --connection.host=10.0.0.2.",
        add_help=False,
    )
    serve.add_argument("--policy", required=True, help="policy run directory (voltron train-policy output)")
    serve.add_argument("--robot", help="robot config YAML, e.g. configs/robots/franka.yaml (same as --config)")
    serve.add_argument("--rate", type=float, default=15.0, help="control rate in Hz (default 15)")
    serve.add_argument("--dry-run", action="store_true", help="compute and log actions without sending them")
    serve.add_argument("--max-steps", type=int, default=None, help="stop after this many control steps")
    serve.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds")
    serve.add_argument("--log", default=None, help="JSONL latency log (default runs/ros/serve-<time>.jsonl)")
    serve.add_argument("--backend", default=None, help="override the config's backend (rosbridge, rclpy)")
    serve.add_argument("--instruction", default=None, help="language instruction (overrides the config default)")
    serve.add_argument("--first-obs-timeout", type=float, default=10.0, help="seconds to wait for all streams")
    add_inference_arguments(serve, "the JSONL log's start and stop records")
    add_config_option(serve, ROBOT_CONFIG, " (the robot config, as --robot)")
    serve.set_defaults(func=_serve)

    bag = ros_sub.add_parser(
        "bag2demos",
        help="convert ROS 1/2 bags (.bag, sqlite3, MCAP) to the native demo HDF5",
        description="Convert bags to demonstrations: one episode per bag (or split on the config's bag.split_topic), "
        "streams aligned on the fps grid by header.stamp, gaps flagged and reported. Dotted overrides set robot "
        "config fields, e.g. --bag.split_topic=/episode.",
        add_help=False,
    )
    bag.add_argument("bags", nargs="+", help="ROS 1 .bag files or ROS 2 bag directories (sqlite3 or mcap)")
    bag.add_argument("--robot", help="robot config YAML with the topic map (same as --config)")
    bag.add_argument("--fps", type=float, default=15.0, help="grid rate in frames per second (default 15)")
    bag.add_argument("--out", required=True, help="output HDF5, e.g. demos.hdf5")
    bag.add_argument("--language", default=None, help="instruction for every episode (default: bag topic/config)")
    bag.add_argument("--valid-fraction", type=float, default=0.1)
    bag.add_argument("--seed", type=int, default=0)
    bag.add_argument("--report", default=None, help="also write the conversion report (gaps, skips) as JSON here")
    add_config_option(bag, ROBOT_CONFIG, " (the robot config, as --robot)")
    bag.set_defaults(func=_bag2demos)


def _robot_config(args: argparse.Namespace):
    """The robot config from --robot (or --config) and the dotted overrides."""
    from voltron.errors import UserError
    from voltron.ros.config import load_robot_config

    path = args.robot or args.config
    if path is None or (args.robot and args.config and args.robot != args.config):
        raise UserError("give the robot config once", source="command line", expected="--robot FILE (or --config FILE)")
    return load_robot_config(path, args.overrides)


def _serve(args: argparse.Namespace) -> int:
    import logging
    import time
    from pathlib import Path

    from voltron.policy.base import check_fits
    from voltron.ros.bridge import make_bridge
    from voltron.ros.server import ServeOptions, robot_spec, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = _robot_config(args)
    if args.instruction is not None:
        config.instruction.default = args.instruction
    from voltron.policy import load_policy  # imported here so `voltron --help` stays light

    policy = load_policy(args.policy)
    check_fits(policy, robot_spec(config))  # before connecting; the server checks again on the first observation
    inference = policy.use_inference(args.precision, args.inference_backend)
    if inference is not None:  # a policy with an encoder
        print(f"ros serve: encoder inference path {inference}")
    log_path = args.log or Path("runs/ros") / time.strftime("serve-%Y%m%d-%H%M%S.jsonl")
    options = ServeOptions(
        rate_hz=args.rate,
        dry_run=args.dry_run,
        max_steps=args.max_steps,
        max_seconds=args.max_seconds,
        log_path=log_path,
        first_observation_timeout_s=args.first_obs_timeout,
    )
    bridge = make_bridge(config, args.backend)
    summary = serve(policy, bridge, options)
    print(
        f"ros serve: {summary.steps} steps, {summary.sent} sent, {summary.held} held, "
        f"{summary.missed_deadlines} missed deadlines, stopped by {summary.stop_reason}; log {log_path}"
    )
    return 0


def _bag2demos(args: argparse.Namespace) -> int:
    import json
    import sys

    from voltron.ros.bags import bag2demos

    config = _robot_config(args)
    report = bag2demos(
        args.bags,
        config,
        fps=args.fps,
        out=args.out,
        language=args.language,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
    )
    print(report.summary())
    if args.report:
        with open(args.report, "w") as handle:
            json.dump(report.as_dict(), handle, indent=2)
    if report.episodes_written == 0:
        print("bag2demos: no episode written", file=sys.stderr)
        return 1
    return 0
