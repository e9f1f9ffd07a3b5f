"""Benchmark: rendered Franka Kitchen frames/s, gymnasium-robotics' `FrankaKitchen-v1` `env.render()` vs our renderer.

Run: .venv/bin/python bench/render_kitchen.py [--frames 20] [--rounds 3] [--size 224]

Both paths draw the same kitchen model (gymnasium-robotics' assets) from the same camera, `left_cap`, at the same
size. The default path is `gymnasium.make("FrankaKitchen-v1", render_mode="rgb_array", camera_name="left_cap")`
then `env.render()` (Gymnasium's MujocoRenderer with the model's own visual settings: shadows, reflections, skybox,
8x multisampling). Ours is `voltron.sim.render.OffscreenRenderer` as `KitchenEnv` uses it (one reused
mujoco.Renderer; shadows, reflections, skybox and multisampling off; meshes coarsened on the 8 mm grid), and the
same with the full meshes (`mesh_cell=0`). Only the render call is timed, on a scene stepped by random actions
between frames. The machine is shared and noisy, so the paths alternate timed blocks for `--rounds` rounds and the
summed times are compared. The first frame of each path is saved under bench/out/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from voltron.sim import render as voltron_render  # picks MUJOCO_GL before mujoco is imported
from voltron.sim.env import DEFAULT_MESH_CELL
from voltron.sim.kitchen import build_model

OUT = Path(__file__).resolve().parent / "out"
CAMERA = "left_cap"  # a camera both models have (ours adds R3M's left_cap2/right_cap2)


def default_env(size: int):
    import gymnasium as gym
    import gymnasium_robotics  # noqa: F401  (registers FrankaKitchen-v1)

    env = gym.make("FrankaKitchen-v1", render_mode="rgb_array", camera_name=CAMERA, width=size, height=size)
    env.reset(seed=0)
    env.action_space.seed(0)
    return env


def time_default(env, frames: int) -> tuple[float, np.ndarray]:
    # Gymnasium's offscreen viewer makes its GL context current only when created; with our renderer in the same
    # process it must be made current again before drawing.
    env.unwrapped.robot_env.mujoco_renderer._get_viewer("rgb_array").make_context_current()
    total, frame = 0.0, None
    for _ in range(frames):
        env.step(env.action_space.sample())
        start = time.perf_counter()
        frame = env.render()
        total += time.perf_counter() - start
    return total, frame


def time_ours(renderer, model, data, rng: np.random.Generator, frames: int) -> tuple[float, np.ndarray]:
    total, frame = 0.0, None
    for _ in range(frames):
        data.ctrl[:9] = data.qpos[:9] + rng.uniform(-0.05, 0.05, 9)
        voltron_render.mujoco.mj_step(model, data, nstep=40)
        start = time.perf_counter()
        frame = renderer.render(data)
        total += time.perf_counter() - start
    return total, frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="frames per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="alternating blocks per path")
    parser.add_argument("--size", type=int, default=224, help="square frame size in pixels")
    args = parser.parse_args()
    mujoco = voltron_render.mujoco
    paths: dict[str, tuple] = {}
    for name, cell in (("ours", DEFAULT_MESH_CELL), ("ours, full meshes", 0.0)):
        model = build_model()
        data = mujoco.MjData(model)
        mujoco.mj_resetDataKeyframe(model, data, 0)
        renderer = voltron_render.OffscreenRenderer(
            model, width=args.size, height=args.size, camera=CAMERA, mesh_cell=cell
        )
        paths[name] = (renderer, model, data, np.random.default_rng(0))
    env = default_env(args.size)
    totals = {"gymnasium env.render()": 0.0, **dict.fromkeys(paths, 0.0)}
    first: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        seconds, frame = time_default(env, args.frames)
        totals["gymnasium env.render()"] += seconds
        first.setdefault("gymnasium", frame)
        for name, (renderer, model, data, rng) in paths.items():
            seconds, frame = time_ours(renderer, model, data, rng, args.frames)
            totals[name] += seconds
            first.setdefault(name, frame)
    env.close()
    OUT.mkdir(exist_ok=True)
    for name, frame in first.items():
        Image.fromarray(frame).save(OUT / f"kitchen_{name.split(',')[0].replace(' ', '_')}_{CAMERA}.png")
    frames = args.frames * args.rounds
    baseline = totals["gymnasium env.render()"]
    print(f"Franka Kitchen, camera {CAMERA}, {args.size}x{args.size}, {frames} frames per path")
    for name, seconds in totals.items():
        print(f"  {name:24s} {frames / seconds:7.1f} frames/s   {baseline / seconds:5.2f}x gymnasium")


if __name__ == "__main__":
    main()
