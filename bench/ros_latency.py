"""Observation-to-command latency of `voltron ros serve` over a loopback rosbridge, and missed control deadlines.

Starts the ROS peer from `.venv-ros` (scripts/setup_ros_peer.sh): rosbridge-server-rs on 127.0.0.1 and the rclpy stub
robot publishing a JPEG camera at 30 Hz and joint states at 50 Hz. Runs the real server loop (rosbridge backend,
safety layer) at --rate for --seconds, then reports:
- end-to-end observation-to-command latency: the stub's receipt of each policy command minus the header stamp of the
  newest camera frame it was computed from (p50/p99; includes the frame's age when the tick began); holds, sent when
  the safety layer stops the policy (e.g. inference over its budget), are reported separately;
- server-side tick time: observation decode + inference + safety + send (p50/p99), which must fit in a period;
- missed deadlines: ticks that overran their slot on the fixed grid.

What runs as the policy, and what the report says it measured:
- `--policy RUN`: voltron.policy.load_policy(RUN), a BC policy checkpoint (its proprio and action sizes set the stub's
  joint count);
- `--encoder v-cond` (default): voltron.load("v-cond", pretrained=False) on CPU + MAP pooling + a linear head, random
  weights: the compute of a v-cond BC policy without a trained checkpoint;
- `--transport-only`, or when the encoder cannot load: no model, only transport + JPEG decode + safety.

`--paths fp32/eager,int8/onnxruntime` serves the same policy through each encoder inference path
(voltron.models.inference; `auto/auto` lets it pick) side by side: --segments rounds, each running every path for
--seconds/--segments in turn (A B A B), against one ROS peer, so machine noise hits every path alike. Each path's
report holds what its JSONL start record says served it.
Usage: .venv/bin/python bench/ros_latency.py [--seconds 30] [--rate 15] [--policy RUN | --encoder v-cond |
    --transport-only] [--paths fp32/eager,int8/onnxruntime] [--segments 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from voltron.policy.base import Policy

REPO = Path(__file__).resolve().parents[1]


def load_peer():
    spec = importlib.util.spec_from_file_location("voltron_ros_peer", REPO / "tests" / "ros_peer" / "peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StandInPolicy(Policy):
    """A policy that only acts (nothing to train), with `dim`-d proprio and actions and no camera name: it reads
    whichever camera the robot has."""

    def __init__(self, dim: int):
        super().__init__(proprio_dim=dim, action_dim=dim)

    def forward(self, batch: dict):
        raise NotImplementedError("a benchmark stand-in has nothing to train")

    def reset(self) -> None:
        pass


class TransportOnlyPolicy(StandInPolicy):
    """No model: a distinct tiny action per call, so the transport + safety path is all that is measured."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.dim, self.calls = dim, 0

    def select_action(self, obs: dict) -> np.ndarray:
        self.calls += 1
        return np.full(self.dim, 1e-4 * (self.calls % 1000))


class EncoderPolicy(StandInPolicy):
    """v-cond encoder (random init) + MAP pooling + linear head on CPU: a compute stand-in for the BC policy."""

    def __init__(self, model_id: str, dim: int, threads: int, precision: str = "fp32", backend: str = "eager"):
        import torch

        import voltron

        super().__init__(dim)

        torch.set_num_threads(threads)
        self.torch = torch
        self.model, self.preprocess = voltron.load(model_id, pretrained=False, precision=precision, backend=backend)
        self.path = str(getattr(self.model, "spec", "fp32/eager"))
        self.pool = voltron.instantiate_extractor(self.model).eval()
        self.head = torch.nn.Linear(
            self.pool.embed_dim if hasattr(self.pool, "embed_dim") else self.model.embed_dim, dim
        ).eval()
        with torch.no_grad():  # small outputs: the action stays far inside the limits
            self.head.weight.mul_(1e-3)
            self.head.bias.zero_()
        self.description = (
            f"{model_id} (random init, {self.model.config.image_size}px, {threads} torch threads) + MAP + linear head"
        )
        # its language model runs once per instruction: select_action's inference mode memoises it, as a BC policy's

    @property
    def inference(self) -> str:
        return self.path

    def select_action(self, obs: dict) -> np.ndarray:
        torch = self.torch
        camera = next(iter(obs["images"].values()))
        with torch.inference_mode():
            pixels = self.preprocess(camera)[None]  # (1, 3, S, S)
            tokens = self.model(pixels, [obs["language"]], mode="multimodal")  # (1, N, D)
            return self.head(self.pool(tokens)).numpy()[0]


def percentiles(values) -> dict:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if not values.size:
        return {"n": 0}
    return {
        "n": int(values.size),
        "p50": round(float(np.percentile(values, 50)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "max": round(float(values.max()), 2),
    }


def match_commands(steps: list[dict], received: list[dict]) -> list[tuple[dict, dict]]:
    """Pair sent steps with the stub's receipts in order, by equal action values (early ones may be lost to DDS
    discovery, so a step without a receipt is skipped)."""
    pairs, j = [], 0
    for step in (s for s in steps if s["sent"]):
        want = np.round(step["action"], 5)
        k = j
        while k < len(received) and not np.allclose(np.round(received[k]["data"], 5), want, atol=1e-5):
            k += 1
        if k < len(received):
            pairs.append((step, received[k]))
            j = k + 1
    return pairs


def make_policy(args: argparse.Namespace, path: str):
    """The policy for one inference path, and what it measures."""
    precision, backend = path.split("/")
    if args.policy:
        import torch

        from voltron.policy import load_policy

        torch.set_num_threads(args.threads)
        policy = load_policy(args.policy)
        policy.use_inference(precision, backend)
        if policy.proprio_dim != policy.action_dim:
            raise SystemExit(
                f"ros_latency: {args.policy} reads {policy.proprio_dim}-d proprio and acts {policy.action_dim}-d; "
                "the stub robot publishes as many joints as it takes commands"
            )
        return policy, f"policy {args.policy}"
    if args.transport_only:
        return TransportOnlyPolicy(3), "transport + JPEG decode + safety only (no policy compute)"
    try:
        policy = EncoderPolicy(args.encoder, 3, args.threads, precision, backend)
        return policy, policy.description
    except Exception as err:  # the encoder is optional for this bench: say so and measure the rest
        print(
            f"ros_latency: cannot build the {args.encoder} stand-in ({type(err).__name__}: {err}); "
            "measuring transport + safety only",
            file=sys.stderr,
        )
        return TransportOnlyPolicy(3), "transport + JPEG decode + safety only (no policy compute)"


def robot_config(port: int, dim: int, inference_budget_ms: float | None, camera: str | None = None):
    from voltron.ros.config import load_robot_config

    cfg = load_robot_config(
        REPO / "configs" / "robots" / "generic.yaml",
        [f"--connection.port={port}", "--action.topic=/commands", "--estop.robot_service=/estop"],
    )
    if camera:  # a BC policy reads the camera its demos were recorded with, by name
        cfg.cameras = {camera: next(iter(cfg.cameras.values()))}
    joints = [f"joint{i + 1}" for i in range(dim)]
    cfg.state[0].joints, cfg.action.joints = joints, joints
    cfg.action.low, cfg.action.high, cfg.action.max_delta = [-1.0] * dim, [1.0] * dim, [0.05] * dim
    cfg.instruction.default = "open the drawer"
    cfg.safety.inference_budget_ms = inference_budget_ms
    cfg.validate("bench config")
    return cfg


def path_report(path: str, runs: list[dict], received: list[dict], rate: float, budget_ms: float | None) -> dict:
    """One path's figures over all its segments: each run is {summary, records, t0, t1}."""
    pairs, steps_log, served = [], [], set()
    for run in runs:
        steps = [r for r in run["records"] if "step" in r]
        served |= {r.get("inference") for r in run["records"] if r.get("event") == "start"}
        window = [r for r in received if run["t0"] <= r["t"] <= run["t1"]]
        pairs += match_commands(steps, window)
        steps_log += steps
    # End-to-end: stub receipt minus the stamp of the newest camera frame the step used; policy commands and holds
    # (sent when the watchdog or the inference budget stops the policy) are reported apart.
    timed = [(step, got) for step, got in pairs if step.get("image_stamp") is not None]
    e2e = [(got["t"] - step["image_stamp"]) * 1e3 for step, got in timed if not step["held"]]
    e2e_hold = [(got["t"] - step["image_stamp"]) * 1e3 for step, got in timed if step["held"]]
    summaries = [run["summary"] for run in runs]
    hold_reasons: dict[str, int] = {}
    for summary in summaries:
        for key, count in summary.hold_reasons.items():
            hold_reasons[key] = hold_reasons.get(key, 0) + count
    period_ms = 1e3 / rate
    return {
        "path": path,
        "served_by": sorted(str(s) for s in served),
        "segments": len(runs),
        "steps": sum(s.steps for s in summaries),
        "sent": sum(s.sent for s in summaries),
        "held": sum(s.held for s in summaries),
        "hold_reasons": hold_reasons,
        "missed_deadlines": sum(s.missed_deadlines for s in summaries),
        "warmup_s": round(max(s.warmup_s for s in summaries), 3),
        "matched_commands": len(pairs),
        "inference_budget_ms": budget_ms if budget_ms is not None else period_ms,
        "obs_to_command_ms_end_to_end": percentiles(e2e),
        "obs_to_hold_ms_end_to_end": percentiles(e2e_hold),
        "obs_to_command_ms_server_side": percentiles(r["obs_to_command_ms"] for r in steps_log if not r["held"]),
        "tick_ms": percentiles(r["tick_ms"] for r in steps_log),
        "inference_ms": percentiles(r["inference_ms"] for r in steps_log),
        "p99_under_one_period": bool(e2e) and float(np.percentile(e2e, 99)) < period_ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="serving time per path (over all segments)")
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--policy", default=None, help="a policy run directory for voltron.policy.load_policy")
    parser.add_argument("--encoder", default="v-cond", help="model id for the stand-in policy (default v-cond)")
    parser.add_argument("--transport-only", action="store_true", help="no model: transport + safety only")
    parser.add_argument("--threads", type=int, default=max(1, min(4, (os.cpu_count() or 2))))
    parser.add_argument("--camera", default="480x640", help="camera frame HxW published as JPEG (default 480x640)")
    parser.add_argument(
        "--paths", default="fp32/eager", help="comma-separated encoder inference paths PRECISION/BACKEND, side by side"
    )
    parser.add_argument("--segments", type=int, default=1, help="alternating rounds over the paths (A B A B ...)")
    parser.add_argument(
        "--inference-budget-ms",
        type=float,
        default=None,
        help="safety.inference_budget_ms (default: one period, as deployed; raise it to time a slow model's commands)",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "ros_latency.json"))
    args = parser.parse_args(argv)

    from voltron.ros.bridge import make_bridge
    from voltron.ros.server import ServeOptions, serve

    peer_mod = load_peer()
    paths = ["fp32/eager"] if args.transport_only else args.paths.split(",")
    policies = {}
    for path in paths:
        start = time.perf_counter()
        policies[path] = make_policy(args, path)
        served = getattr(policies[path][0], "inference", "-")
        print(f"ros_latency: {path} -> {served}, built in {time.perf_counter() - start:.1f} s", flush=True)
    first = policies[paths[0]][0]
    dim = int(getattr(first, "action_dim", 3))
    measured = policies[paths[0]][1]
    steps_per_segment = max(1, int(round(args.seconds * args.rate / max(1, args.segments))))

    height, width = (int(v) for v in args.camera.lower().split("x"))
    runs: dict[str, list[dict]] = {path: [] for path in paths}
    with tempfile.TemporaryDirectory(prefix="ros_latency_") as tmp:
        tmp = Path(tmp)
        jpeg = peer_mod.write_test_jpeg(tmp / "frame.jpg", height=height, width=width)
        total_s = args.seconds * len(paths) + 60 * len(paths) * max(1, args.segments)
        try:
            peer = peer_mod.RosPeer(tmp / "peer", jpeg=jpeg, joints=dim, max_seconds=total_s + 120).start()
        except peer_mod.PeerUnavailable as err:
            print(f"ros_latency: ROS peer unavailable: {err}", file=sys.stderr)
            return 2
        try:
            cfg = robot_config(peer.port, dim, args.inference_budget_ms, getattr(first, "camera", None))
            for segment in range(max(1, args.segments)):
                for path in paths:
                    log_path = tmp / f"serve-{segment}-{path.replace('/', '-')}.jsonl"
                    t0 = time.time()
                    summary = serve(
                        policies[path][0],
                        make_bridge(cfg),
                        ServeOptions(
                            rate_hz=args.rate,
                            max_steps=steps_per_segment,
                            max_seconds=args.seconds + 30,
                            log_path=log_path,
                        ),
                    )
                    time.sleep(0.5)  # the last commands reach the stub before the next path starts
                    records = [json.loads(line) for line in log_path.read_text().splitlines()]
                    runs[path].append({"summary": summary, "records": records, "t0": t0, "t1": time.time()})
            received = peer.records("command")
        finally:
            peer.stop()
    reports = [path_report(path, runs[path], received, args.rate, args.inference_budget_ms) for path in paths]
    period_ms = 1e3 / args.rate
    result = {
        "measured": measured,
        "rate_hz": args.rate,
        "period_ms": round(period_ms, 2),
        "camera": f"{height}x{width} JPEG at 30 Hz",
        "segments": max(1, args.segments),
        "paths": reports,
    }
    if len(reports) == 1:  # the single-path layout earlier runs wrote, kept for readers of bench/out
        result.update({k: v for k, v in reports[0].items() if k != "path"})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"ros_latency: {measured}; {len(paths)} path(s) x {max(1, args.segments)} segment(s), A B A B")
    for report in reports:
        print(
            f"[{report['path']} served by {', '.join(report['served_by'])}] {report['steps']} steps at {args.rate:g} "
            f"Hz, {report['sent']} sent, {report['held']} held, {report['missed_deadlines']} missed deadlines; "
            f"{report['matched_commands']} commands matched at the stub"
        )
        for key in ("obs_to_command_ms_end_to_end", "obs_to_hold_ms_end_to_end", "tick_ms", "inference_ms"):
            print(f"  {key:32s} {report[key]}")
        print(f"  hold reasons: {report['hold_reasons'] or 'none'}")
        print(f"  policy-command p99 under one period ({period_ms:.1f} ms): {report['p99_under_one_period']}")
    base = reports[0]
    for report in reports[1:]:
        pairs = [(key, base[key].get("p50"), report[key].get("p50")) for key in ("inference_ms", "tick_ms")]
        ratios = ", ".join(f"{key} p50 {b / f:.2f}x" for key, b, f in pairs if b and f)
        print(f"ratio {report['path']} vs {base['path']}: {ratios or 'n/a'}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
