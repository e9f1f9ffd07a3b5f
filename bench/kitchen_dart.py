"""Benchmark: scripted Franka Kitchen expert success under DART noise (executed, not recorded), per task and sigma.

Run: .venv/bin/python bench/kitchen_dart.py [--seeds 20] [--sigmas 0,0.03,0.1] [--tasks kitchen-knob-on,...]

Attempt k is what `voltron sim collect --dart-noise SIGMA` runs as its attempt k (reset seed k, the expert's and the
noise's generators seeded alike, through `voltron.sim.collect.DartExecution`), without rendering. Collection keeps
only the successes, so this rate is the share of attempts a DART demo file costs beyond its episode count, and a
sigma the expert cannot recover from shows here before any demos are rendered.
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm import tqdm

from voltron.policy.evaluate import wilson_interval
from voltron.sim.collect import DART_STREAM, DartExecution
from voltron.sim.experts import make_expert, rollout
from voltron.sim.kitchen import KitchenEnv
from voltron.sim.tasks import KITCHEN_TASKS


def successes(task: str, sigma: float, seeds: int) -> int:
    """How many of attempts 0..seeds-1 succeed within the task's horizon with DART noise `sigma` (collect's seed 0)."""
    env = KitchenEnv(task, image_size=8, render_images=False)
    try:
        expert = make_expert(env.task, env=env)
        count = 0
        for attempt in tqdm(range(seeds), desc=f"{task} sigma {sigma:g}", leave=False):
            expert.reset(seed=[0, attempt])
            runner = DartExecution(env, sigma, np.random.default_rng([0, attempt, DART_STREAM])) if sigma else env
            count += rollout(runner, expert, seed=attempt, post_success_steps=0).success
        return count
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--sigmas", default="0,0.03,0.1", help="comma-separated DART noise stds")
    parser.add_argument("--tasks", default=",".join(KITCHEN_TASKS), help="comma-separated kitchen task names")
    args = parser.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    print(f"expert success under DART noise, attempts 0..{args.seeds - 1}, the task's horizon (95% Wilson interval)")
    print("| task | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |")
    print("|---|" + "---|" * len(sigmas))
    for task in args.tasks.split(","):
        cells = []
        for sigma in sigmas:
            k = successes(task, sigma, args.seeds)
            low, high = wilson_interval(k, args.seeds)
            cells.append(f"{k}/{args.seeds} ({low:.0%}-{high:.0%})")
        print(f"| {task} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
