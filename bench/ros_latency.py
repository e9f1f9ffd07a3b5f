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
- `--policy RUN`: voltron.policy.load_policy(RUN) (issue 6);
- `--encoder v-cond` (default): voltron.load("v-cond", pretrained=False) on CPU + MAP pooling + a linear head, random
  weights: the compute of a v-cond BC policy, a stand-in until voltron.policy lands;
- `--transport-only`, or when the encoder cannot load: no model, only transport + JPEG decode + safety.
Usage: .venv/bin/python bench/ros_latency.py [--seconds 30] [--rate 15] [--encoder v-cond | --transport-only]
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

REPO = Path(__file__).resolve().parents[1]


def load_peer():
    spec = importlib.util.spec_from_file_location("voltron_ros_peer", REPO / "tests" / "ros_peer" / "peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TransportOnlyPolicy:
    """No model: a distinct tiny action per call, so the transport + safety path is all that is measured."""

    def __init__(self, dim: int):
        self.dim, self.calls = dim, 0

    def select_action(self, obs: dict) -> np.ndarray:
        self.calls += 1
        return np.full(self.dim, 1e-4 * (self.calls % 1000))


class EncoderPolicy:
    """v-cond encoder (random init) + MAP pooling + linear head on CPU: a compute stand-in for the BC policy."""

    def __init__(self, model_id: str, dim: int, threads: int):
        import torch

        import voltron

        torch.set_num_threads(threads)
        self.torch = torch
        self.model, self.preprocess = voltron.load(model_id, pretrained=False)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--policy", default=None, help="a policy run directory for voltron.policy.load_policy")
    parser.add_argument("--encoder", default="v-cond", help="model id for the stand-in policy (default v-cond)")
    parser.add_argument("--transport-only", action="store_true", help="no model: transport + safety only")
    parser.add_argument("--threads", type=int, default=max(1, min(4, (os.cpu_count() or 2))))
    parser.add_argument("--camera", default="480x640", help="camera frame HxW published as JPEG (default 480x640)")
    parser.add_argument(
        "--inference-budget-ms",
        type=float,
        default=None,
        help="safety.inference_budget_ms (default: one period, as deployed; raise it to time a slow model's commands)",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "ros_latency.json"))
    args = parser.parse_args(argv)

    from voltron.ros.bridge import make_bridge
    from voltron.ros.config import load_robot_config
    from voltron.ros.server import ServeOptions, serve

    peer_mod = load_peer()
    dim = 3
    measured = "transport + JPEG decode + safety only (no policy compute)"
    if args.policy:
        from voltron.policy import load_policy

        policy = load_policy(args.policy)
        measured = f"policy {args.policy}"
    elif args.transport_only:
        policy = TransportOnlyPolicy(dim)
    else:
        try:
            policy = EncoderPolicy(args.encoder, dim, args.threads)
            measured = policy.description
        except Exception as err:  # the encoder is optional for this bench: say so and measure the rest
            print(
                f"ros_latency: cannot build the {args.encoder} stand-in ({type(err).__name__}: {err}); "
                "measuring transport + safety only",
                file=sys.stderr,
            )
            policy = TransportOnlyPolicy(dim)

    height, width = (int(v) for v in args.camera.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="ros_latency_") as tmp:
        tmp = Path(tmp)
        jpeg = peer_mod.write_test_jpeg(tmp / "frame.jpg", height=height, width=width)
        try:
            peer = peer_mod.RosPeer(tmp / "peer", jpeg=jpeg, joints=dim, max_seconds=args.seconds + 120).start()
        except peer_mod.PeerUnavailable as err:
            print(f"ros_latency: ROS peer unavailable: {err}", file=sys.stderr)
            return 2
        try:
            cfg = load_robot_config(
                REPO / "configs" / "robots" / "generic.yaml",
                [f"--connection.port={peer.port}", "--action.topic=/commands", "--estop.robot_service=/estop"],
            )
            joints = [f"joint{i + 1}" for i in range(dim)]
            cfg.state[0].joints, cfg.action.joints = joints, joints
            cfg.action.low, cfg.action.high, cfg.action.max_delta = [-1.0] * dim, [1.0] * dim, [0.05] * dim
            cfg.instruction.default = "open the drawer"
            cfg.safety.inference_budget_ms = args.inference_budget_ms
            cfg.validate("bench config")
            log_path = tmp / "serve.jsonl"
            steps = int(round(args.seconds * args.rate))
            summary = serve(
                policy,
                make_bridge(cfg),
                ServeOptions(rate_hz=args.rate, max_steps=steps, max_seconds=args.seconds + 30, log_path=log_path),
            )
            time.sleep(0.5)
            received = peer.records("command")
        finally:
            peer.stop()
        records = [json.loads(line) for line in log_path.read_text().splitlines()]
    steps_log = [r for r in records if "step" in r]
    pairs = match_commands(steps_log, received)
    # End-to-end: stub receipt minus the stamp of the newest camera frame the step used; policy commands and holds
    # (sent when the watchdog or the inference budget stops the policy) are reported apart.
    timed = [(step, got) for step, got in pairs if step.get("image_stamp") is not None]
    e2e_policy = [(got["t"] - step["image_stamp"]) * 1e3 for step, got in timed if not step["held"]]
    e2e_hold = [(got["t"] - step["image_stamp"]) * 1e3 for step, got in timed if step["held"]]
    e2e = e2e_policy
    period_ms = 1e3 / args.rate
    result = {
        "measured": measured,
        "rate_hz": args.rate,
        "period_ms": round(period_ms, 2),
        "camera": f"{height}x{width} JPEG at 30 Hz",
        "steps": summary.steps,
        "sent": summary.sent,
        "held": summary.held,
        "hold_reasons": summary.hold_reasons,
        "missed_deadlines": summary.missed_deadlines,
        "warmup_s": round(summary.warmup_s, 3),
        "matched_commands": len(pairs),
        "inference_budget_ms": args.inference_budget_ms if args.inference_budget_ms is not None else period_ms,
        "obs_to_command_ms_end_to_end": percentiles(e2e),
        "obs_to_hold_ms_end_to_end": percentiles(e2e_hold),
        "obs_to_command_ms_server_side": percentiles(r["obs_to_command_ms"] for r in steps_log if not r["held"]),
        "tick_ms": percentiles(r["tick_ms"] for r in steps_log),
        "inference_ms": percentiles(r["inference_ms"] for r in steps_log),
        "p99_under_one_period": bool(e2e) and float(np.percentile(e2e, 99)) < period_ms,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"ros_latency: {measured}")
    print(
        f"  {summary.steps} steps at {args.rate:g} Hz, {summary.sent} sent, {summary.held} held, "
        f"{summary.missed_deadlines} missed deadlines; {len(pairs)} commands matched at the stub"
    )
    for key in ("obs_to_command_ms_end_to_end", "obs_to_hold_ms_end_to_end", "tick_ms", "inference_ms"):
        print(f"  {key:32s} {result[key]}")
    print(f"  hold reasons: {summary.hold_reasons or 'none'}")
    print(f"  policy-command p99 under one period ({period_ms:.1f} ms): {result['p99_under_one_period']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
