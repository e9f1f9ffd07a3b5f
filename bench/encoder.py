"""Encoder throughput and latency of every inference path against today's fp32 SDPA path, side by side in one run.

    .venv/bin/python bench/encoder.py [--model v-cond] [--batch 32] [--iters 3] [--device cpu|cuda]
        [--paths fp32/eager,int8/eager,...] [--compile] [--policy RUN_DIR] [--json OUT]

Rows: `upstream-attn` (fp32 with the eager reference attention, upstream Voltron's arithmetic), then each inference
path of voltron.models.inference; `fp32/eager` is today's SDPA path and the base of every ratio. Default paths: every
one this machine can run, bf16 only where the hardware computes bf16 natively, torch.compile only with --compile
(minutes of compilation). Each round times every row once at --batch and at batch 1 (median of --latency-calls), in
alternation, so machine noise hits all rows alike: ratios are what to read; absolute times on a shared machine
are noise.

Accuracy, on the same inputs for every row: max-abs and relative error of the tokens against fp32 eager, and, with
--policy (a BC policy run directory on this encoder's architecture), the max deviation of its actions on frames of
its own demonstrations, in its [-1, 1] action units, against ACTION_TOL.

The frozen language model runs in every row, un-cached, as `voltron.load` gives it (a policy caches it: see
bench/ros_latency.py for the control loop).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

import voltron
from voltron.models.blocks import set_attention_impl
from voltron.models.inference import (
    ACTION_TOL,
    BACKEND_PRECISIONS,
    TOKEN_REL_TOL,
    accelerate,
    action_deviation,
    backend_unavailable,
    bf16_native,
    precision_unavailable,
    token_error,
)

UPSTREAM = "upstream-attn"


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def default_paths(device: str, with_compile: bool) -> list[str]:
    paths = []
    for backend, precisions in BACKEND_PRECISIONS.items():
        for precision in precisions:
            if backend == "compile" and not with_compile:
                continue
            if precision == "bf16" and not bf16_native(device):
                continue  # autocast emulates bf16 on such hardware: slower than fp32, nothing to learn
            if backend_unavailable(backend, device) or precision_unavailable(precision, device):
                continue
            paths.append(f"{precision}/{backend}")
    return paths


def policy_accuracy(run_dir: str, paths: list[str], frames_per_episode: int = 16) -> dict[str, dict]:
    """Action deviation of the policy in `run_dir` under each path, on frames of its training demonstrations."""
    import numpy as np

    from voltron.datasets.demos import DemoFile
    from voltron.policy.model import load_policy

    policy = load_policy(run_dir)
    meta = json.loads((Path(run_dir) / "config.json").read_text())
    demos = meta["training"]["demos"]  # the HDF5 file(s) train-policy read
    demo_paths = demos if isinstance(demos, list) else [demos]
    images, proprio, language = [], [], []
    with DemoFile(demo_paths[0]) as demo_file:
        for index in range(len(demo_file)):
            episode = demo_file[index]
            camera = policy.camera or sorted(episode.images)[0]
            stride = max(1, len(episode) // frames_per_episode)
            images.append(episode.images[camera][::stride])
            proprio.append(getattr(episode, policy.lowdim)[::stride])
            language += [episode.language] * len(images[-1])
    obs = {
        "images": {policy.camera: np.concatenate(images)},
        policy.lowdim: np.concatenate(proprio),
        "language": language,
    }
    results = {}
    for path in paths:
        precision, backend = path.split("/")
        results[path] = action_deviation(policy, obs, precision, backend)
        results[path]["frames"] = len(language)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="v-cond")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3, help="rounds; each times every row once")
    parser.add_argument("--latency-calls", type=int, default=5, help="batch-1 calls per row per round (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--paths", default=None, help="comma-separated PRECISION/BACKEND (default: all runnable)")
    parser.add_argument("--compile", action="store_true", help="include the torch.compile paths")
    parser.add_argument("--no-upstream", action="store_true", help="leave out the upstream-attention row")
    parser.add_argument("--policy", default=None, help="a BC policy run directory: also measure action deviation")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = voltron.load(args.model, pretrained=False, device=args.device)
    paths = args.paths.split(",") if args.paths else default_paths(args.device, args.compile)
    if "fp32/eager" not in paths:
        paths.insert(0, "fp32/eager")
    print(
        f"{args.model} ({model.num_parameters() / 1e6:.1f}M params) on {args.device} "
        f"({torch.backends.cpu.get_cpu_capability() if args.device == 'cpu' else torch.cuda.get_device_name()}, "
        f"native bf16: {bf16_native(args.device)}), {torch.get_num_threads()} threads, {args.iters} rounds",
        flush=True,
    )
    encoders = {}
    for path in paths:
        precision, backend = path.split("/")
        encoders[path] = accelerate(model, precision, backend)
        print(f"built {path} in {encoders[path].report['build_s']:.1f} s", flush=True)
    rows = ([] if args.no_upstream else [UPSTREAM]) + paths

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, *model.image_shape(), generator=generator).to(args.device)
    captions = ["open the drawer", "push the button", "hammer the nail", "pick up the bin"]
    lang = [captions[i % len(captions)] for i in range(args.batch)] if model.uses_language else None

    def run(row: str, batch: int) -> torch.Tensor:
        with torch.inference_mode():
            if row == UPSTREAM:
                set_attention_impl(model, "eager")
                try:
                    return model(images[:batch], lang[:batch] if lang else None)
                finally:
                    set_attention_impl(model, "sdpa")
            return encoders[row](images[:batch], lang[:batch] if lang else None)

    reference = run("fp32/eager", args.batch)
    accuracy = {row: token_error(reference, run(row, args.batch)) for row in rows}  # also warms every row up
    for row in rows:
        run(row, 1)
    throughput = {row: [] for row in rows}
    latency = {row: [] for row in rows}
    for _ in range(args.iters):
        for row in rows:
            throughput[row].append(args.batch / timed(lambda r=row: run(r, args.batch), args.device))
            calls = [1000 * timed(lambda r=row: run(r, 1), args.device) for _ in range(args.latency_calls)]
            latency[row].append(statistics.median(calls))

    actions = policy_accuracy(args.policy, [p for p in paths if p != "fp32/eager"]) if args.policy else {}
    base_tput = statistics.median(throughput["fp32/eager"])
    base_lat = statistics.median(latency["fp32/eager"])
    print(
        f"{'path':<18}{'img/s @' + str(args.batch):>12}{'x fp32':>8}{'ms @1':>9}{'x fp32':>8}"
        f"{'tok max-abs':>13}{'tok rel':>10}{'act max dev':>13}"
    )
    results = []
    for row in rows:
        tput, lat = statistics.median(throughput[row]), statistics.median(latency[row])
        act = actions.get(row, {}).get("action_max_dev")
        result = {
            "path": row,
            "images_per_s": round(tput, 2),
            "throughput_x_fp32_sdpa": round(tput / base_tput, 3),
            "latency_ms_batch1": round(lat, 2),
            "latency_x_fp32_sdpa": round(base_lat / lat, 3),
            **{k: float(f"{v:.3g}") for k, v in accuracy[row].items()},
            "action_max_dev": act,
            "within_token_tol": row == UPSTREAM or accuracy[row]["token_rel_err"] <= TOKEN_REL_TOL[row.split("/")[0]],
            "within_action_tol": None if act is None else act <= ACTION_TOL,
        }
        results.append(result)
        print(
            f"{row:<18}{tput:>12.1f}{tput / base_tput:>7.2f}x{lat:>9.1f}{base_lat / lat:>7.2f}x"
            f"{accuracy[row]['token_max_abs_err']:>13.3g}{accuracy[row]['token_rel_err']:>10.3g}"
            f"{'' if act is None else f'{act:.3g}':>13}"
        )
    print(f"tolerances: token rel {TOKEN_REL_TOL}, action max dev {ACTION_TOL} ([-1, 1] action units)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": args.model, "batch": args.batch, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
