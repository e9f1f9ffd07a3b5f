"""Benchmark: scripted Franka Kitchen expert success per task over reset seeds, within R3M's 50 steps and a longer cap.

Run: .venv/bin/python bench/kitchen_experts.py [--seeds 50] [--cap 100] [--tasks kitchen-sdoor-open,...]

Each seed resets the task's env (seeds 0..N-1, as `voltron sim collect` does), runs `KitchenExpert` for `--cap`
steps without rendering, and records the step at which the env first reports success (R3M's rule: the goal held
for more than 5 steps). Failed seeds are listed after the table with the expert's phase and the joint's value. Success within 50 steps is R3M's horizon; within the cap shows what a longer horizon buys.
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm import tqdm

from voltron.sim.kitchen import GOALS, KitchenEnv
from voltron.sim.kitchen_experts import KitchenExpert
from voltron.sim.tasks import R3M_KITCHEN_HORIZON


def first_successes(task: str, seeds: int, cap: int) -> tuple[list[int | None], list[str]]:
    """(the step of first success per seed, None for a failure; one line per failed seed: where the expert was)."""
    env = KitchenEnv(task, image_size=8, render_images=False, horizon=cap)
    expert = KitchenExpert(env)
    steps: list[int | None] = []
    failures: list[str] = []
    for seed in tqdm(range(seeds), desc=task, leave=False):
        expert.reset(seed)
        _, info = env.reset(seed=seed)
        first = None
        for step in range(1, cap + 1):
            _, _, _, _, info = env.step(expert(info["state"]))
            if info["success"]:
                first = step
                break
        steps.append(first)
        if first is None:  # the phase tells a missed grasp (turn, joint near 0) from a slow or lost pull
            failures.append(
                f"seed {seed}: phase {expert.phase}, {env.goal.joint} at {env.data.qpos[expert.qpos_address]:.2f} "
                f"(goal {env.goal.goal}), desk offset {np.round(env.desk_offset, 3).tolist()}"
            )
    env.close()
    return steps, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--cap", type=int, default=100, help="steps per episode at most")
    parser.add_argument("--tasks", default=",".join(GOALS), help="comma-separated kitchen task names")
    args = parser.parse_args()
    print(f"| task | success in {R3M_KITCHEN_HORIZON} steps | success in {args.cap} steps | median steps to success |")
    print("|---|---|---|---|")
    failed: dict[str, list[str]] = {}
    for task in args.tasks.split(","):
        steps, failed[task] = first_successes(task, args.seeds, args.cap)
        done = [s for s in steps if s is not None]
        within = sum(s <= R3M_KITCHEN_HORIZON for s in done)
        median = f"{np.median(done):.0f}" if done else "-"
        print(
            f"| {task} | {within}/{args.seeds} = {within / args.seeds:.0%} | {len(done)}/{args.seeds} = "
            f"{len(done) / args.seeds:.0%} | {median} |",
            flush=True,
        )
    for task, lines in failed.items():
        if lines:
            print(f"\n{task}: failed within {args.cap} steps")
            for line in lines:
                print(f"- {line}")


if __name__ == "__main__":
    main()
