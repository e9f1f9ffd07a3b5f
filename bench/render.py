"""Benchmark: rendered env steps/s, Gymnasium's default MetaWorld render path vs voltron's renderer, on the 5 tasks.

Run: .venv/bin/python bench/render.py [--steps 40] [--baseline-steps 10] [--rounds 3]

Both paths step the same task with random actions and render a 224x224 frame from the `corner` camera after every
step. The default path is `gymnasium.make("Meta-World/MT1", render_mode="rgb_array", camera_name="corner", ...)`
then `env.render()` (Gymnasium's MujocoRenderer: shadows, reflections, skybox and 4x multisampling on). Ours is
`voltron.sim.env.SimEnv` with its defaults (one reused mujoco.Renderer; shadows, reflections, skybox and
multisampling off; meshes coarsened on an 8 mm grid, `DEFAULT_MESH_CELL`), and the same with the full meshes
(`mesh_cell=0`) to price the coarsening on its own; the mean absolute difference between the two paths' frames
(same seed, same actions) says what it costs in pixels. The machine is shared and noisy, so each task alternates
timed blocks of the paths for `--rounds` rounds and compares summed times. Each task's first frame from both paths is saved under bench/out/
(the default path's `corner` frames come out upside down; ours are turned upright).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from voltron.sim import render as voltron_render  # picks MUJOCO_GL before mujoco is imported
from voltron.sim.env import DEFAULT_MESH_CELL, SimEnv
from voltron.sim.tasks import EVAL_TASKS, get_task

OUT = Path(__file__).resolve().parent / "out"
SIZE = 224


def make_default_env(task: str, seed: int):
    """MetaWorld's documented single-task Gymnasium env, rendering through Gymnasium's MujocoRenderer."""
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World/* ids)

    env = gym.make(
        "Meta-World/MT1",
        env_name=get_task(task).env_id,
        seed=seed,
        render_mode="rgb_array",
        camera_name="corner",
        width=SIZE,
        height=SIZE,
    )
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def time_default_block(env, steps: int) -> float:
    # Gymnasium's offscreen viewer makes its GL context current only when created, so with a second renderer in
    # the process it must be made current again (else it draws with the other context's textures and meshes).
    env.unwrapped.mujoco_renderer._get_viewer("rgb_array").make_context_current()
    start = time.perf_counter()
    for _ in range(steps):
        env.step(env.action_space.sample())
        env.render()
    return time.perf_counter() - start


def time_voltron_block(env: SimEnv, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        env.step(env.action_space.sample())  # renders the image observation
    return time.perf_counter() - start


def frame_difference(task: str, seed: int, steps: int = 20) -> float:
    """Mean absolute difference (0-255) between coarse-mesh and full-mesh frames along one random-action run."""
    frames = []
    for mesh_cell in (DEFAULT_MESH_CELL, 0.0):
        env = SimEnv(task, image_size=SIZE, mesh_cell=mesh_cell)
        obs, _ = env.reset(seed=seed)
        actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, 4)).astype(np.float32)
        run = [obs["image"]] + [env.step(action)[0]["image"] for action in actions]
        frames.append(np.stack(run).astype(np.int16))
        env.close()
    return float(np.abs(frames[0] - frames[1]).mean())


def bench_task(task: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """(default, voltron full meshes, voltron) steps/s for one task; saves the first frames."""
    default_env = make_default_env(task, args.seed)
    default_first = default_env.render()  # also creates Gymnasium's GL context (not timed)
    voltron_env = SimEnv(task, image_size=SIZE)
    full_env = SimEnv(task, image_size=SIZE, mesh_cell=0.0)
    obs, _ = voltron_env.reset(seed=args.seed)
    full_env.reset(seed=args.seed)
    voltron_env.action_space.seed(args.seed)
    full_env.action_space.seed(args.seed)
    Image.fromarray(obs["image"]).save(OUT / f"{task}.png")
    Image.fromarray(default_first).save(OUT / f"{task}-gymnasium-default.png")
    time_default_block(default_env, 2)  # warm-up
    time_voltron_block(voltron_env, 2)
    time_voltron_block(full_env, 2)
    default_seconds = voltron_seconds = full_seconds = 0.0
    for _ in range(args.rounds):
        default_seconds += time_default_block(default_env, args.baseline_steps)
        full_seconds += time_voltron_block(full_env, args.steps)
        voltron_seconds += time_voltron_block(voltron_env, args.steps)
    for env in (default_env, voltron_env, full_env):
        env.close()
    steps = args.rounds * args.steps
    return args.rounds * args.baseline_steps / default_seconds, steps / full_seconds, steps / voltron_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round on voltron's path")
    parser.add_argument("--baseline-steps", type=int, default=10, help="timed steps per round on the default path")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Gymnasium's env checker complains about MetaWorld's spaces on every make

    OUT.mkdir(parents=True, exist_ok=True)
    print(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}  cpus={os.cpu_count()}  frame={SIZE}x{SIZE}  camera=corner")
    header = ["gymnasium render() steps/s", "voltron full meshes", "voltron", "ratio", "vs full", "frame diff"]
    print(f"{'task':<22}{header[0]:>28}{header[1]:>21}{header[2]:>9}{header[3]:>8}{header[4]:>9}{header[5]:>12}")
    totals = np.zeros(3)  # seconds per step, summed over tasks: default, full meshes, voltron
    for task in EVAL_TASKS:
        rates = np.array(bench_task(task, args))
        totals += 1.0 / rates
        diff = frame_difference(task, args.seed)
        print(
            f"{task:<22}{rates[0]:>28.1f}{rates[1]:>21.1f}{rates[2]:>9.1f}{rates[2] / rates[0]:>7.1f}x"
            f"{rates[2] / rates[1]:>8.2f}x{diff:>9.2f}/255"
        )
    rates = len(EVAL_TASKS) / totals
    print(
        f"{'all five':<22}{rates[0]:>28.1f}{rates[1]:>21.1f}{rates[2]:>9.1f}{rates[2] / rates[0]:>7.1f}x"
        f"{rates[2] / rates[1]:>8.2f}x"
    )
    print(f"first frames: {OUT}/<task>.png (voltron) and <task>-gymnasium-default.png (default path)")
    print(f"cameras turned upright: {sorted(voltron_render.FLIPPED_CAMERAS)}")


if __name__ == "__main__":
    main()
