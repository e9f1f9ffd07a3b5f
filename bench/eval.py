"""Policy-in-the-loop env steps/s: N vectorised envs with one batched encoder call per step vs one env stepped serially.

    MUJOCO_GL=egl .venv/bin/python bench/eval.py [--encoder v-cond] [--num-envs 1 2 4] [--episodes 4] [--horizon 50]

The policy is an untrained BC head on a randomly initialised encoder: throughput does not depend on the weights.
Also extrapolates a full eval-suite (5 tasks x 50 episodes x up to 500 steps) from the best measured rate.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np


def build_policy(encoder_name: str, image_size: int):
    from voltron.datasets.windows import NormStats
    from voltron.models.registry import build_model
    from voltron.policy.config import BCConfig, PolicyConfig
    from voltron.policy.model import BCPolicy

    encoder = build_model(encoder_name).eval().requires_grad_(False)
    unit = NormStats(np.zeros(4), np.ones(4), -np.ones(4), np.ones(4))
    config = BCConfig(policy=PolicyConfig(encoder=encoder_name, pretrained=False, camera="corner"))
    return BCPolicy(config, encoder, 4, 4, unit, unit, image_size=image_size).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="v-cond")
    parser.add_argument("--task", default="drawer-open")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()

    from voltron.policy.evaluate import rollout

    warnings.simplefilter("ignore")
    policy = build_policy(args.encoder, args.image_size)
    rates = {}
    for num_envs in args.num_envs:
        episodes = max(args.episodes, num_envs)
        _, _, seconds, steps = rollout(
            policy, args.task, episodes, seed=0, num_envs=num_envs, horizon=args.horizon, image_size=args.image_size,
            progress=False,
        )  # fmt: skip
        rates[num_envs] = steps / seconds
        print(f"{num_envs} env(s): {steps} env steps in {seconds:.1f} s = {rates[num_envs]:.1f} steps/s")
    base = rates[min(rates)]
    for num_envs, rate in rates.items():
        print(f"ratio {num_envs} envs vs {min(rates)}: {rate / base:.2f}x")
    best = max(rates.values())
    worst_case_steps = 5 * 50 * 500
    print(
        f"a full eval-suite (5 tasks x 50 episodes, <= 500 steps each) with {args.encoder} at {args.image_size} px "
        f"takes at most {worst_case_steps / best / 3600:.1f} h per encoder and seed at {best:.1f} steps/s "
        "(episodes end early on success)"
    )


if __name__ == "__main__":
    main()
