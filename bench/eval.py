"""Where the evaluation protocol's time goes, measured side by side in one run, and what the full protocol costs.

    MUJOCO_GL=egl .venv/bin/python bench/eval.py [--encoder v-cond-tiny] [--image-size 112] [--num-envs 1 2]

Measures, with a randomly initialised encoder (throughput does not depend on the weights):
- the simulator alone: env steps/s with rendering at the protocol's size (one env, in process);
- the encoder: ms per frame at the rollout's batch (num_envs frames), and ms per frame filling the BC token cache;
- the head (extractor + MLP) per action, and one BC training step (MAP extractor on cached tokens);
- policy-in-the-loop env steps/s with N vectorised envs against one env stepped serially (the ratio), and with the
  policy on the cores the render workers leave (the default) against every core (the ratio);
Then prices the default protocol of `voltron eval-suite` (its SuiteOptions defaults) from those measurements: a
projection, labelled as such, with the worst case where every episode runs to the 500-step horizon and a typical
case at the given mean episode length.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def build_policy(encoder_name: str, image_size: int, extractor: str = "map"):
    from voltron.datasets.windows import NormStats
    from voltron.models.registry import build_model
    from voltron.policy.config import BCConfig, PolicyConfig
    from voltron.policy.model import BCPolicy

    encoder = build_model(encoder_name, image_size=image_size).eval().requires_grad_(False)
    unit = NormStats(np.zeros(4), np.ones(4), -np.ones(4), np.ones(4))
    config = BCConfig(
        policy=PolicyConfig(encoder=encoder_name, pretrained=False, camera="corner3", extractor=extractor)
    )
    return BCPolicy(config, encoder, 4, 4, unit, unit, image_size=image_size).eval()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="v-cond-tiny")
    parser.add_argument("--task", default="hammer")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=60)
    parser.add_argument("--bc-batch", type=int, default=256, help="the protocol's train.batch_size")
    parser.add_argument("--mean-length", type=float, default=150.0, help="typical episode length for the estimate")
    args = parser.parse_args()

    import torch

    from voltron.policy.evaluate import policy_threads, run_episodes
    from voltron.sim.env import SimEnv

    warnings.simplefilter("ignore")
    policy = build_policy(args.encoder, args.image_size)
    env = SimEnv(args.task, camera="corner3", image_size=args.image_size)
    env.reset(seed=0)
    action = np.zeros(4, np.float32)
    sim_s = timed(lambda: env.step(action), 100)
    obs, _ = env.reset(seed=0)
    env.close()
    batch = max(args.num_envs)
    frames = torch.from_numpy(np.stack([obs["image"]] * batch))
    lang = [obs["language"]] * batch
    with torch.inference_mode():
        encode_s = timed(lambda: policy.encode_tokens(frames, lang), 10) / batch
        cache_frames = torch.from_numpy(np.stack([obs["image"]] * 32))
        cache_s = timed(lambda: policy.encode_tokens(cache_frames, [obs["language"]] * 32), 3) / 32
        tokens, mask = policy.encode_tokens(frames, lang)
        proprio = torch.zeros(batch, 1, 4)

        def head() -> None:
            policy.head(policy.head_input(policy.pool(tokens, mask), proprio))

        head_s = timed(head, 50) / batch
    bc_tokens = tokens[:1].expand(args.bc_batch, -1, -1).clone().half()
    bc_mask = mask[:1].expand(args.bc_batch, -1).clone()
    policy.train()
    optimizer = torch.optim.AdamW([*policy.extractor.parameters(), *policy.head.parameters()], lr=1e-4)

    def bc_step() -> None:
        batch = {
            "tokens": bc_tokens[:, None],
            "token_mask": bc_mask[:, None],
            "proprio": torch.zeros(args.bc_batch, 1, 4),
        }
        batch["action"] = torch.zeros(args.bc_batch, 4)
        loss, _ = policy(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    bc_s = timed(bc_step, 10)
    policy.eval()
    print(f"{args.encoder} at {args.image_size} px, task {args.task}, torch threads {torch.get_num_threads()}")
    print(f"simulator step + render (1 env, in process): {1000 * sim_s:.1f} ms = {1 / sim_s:.0f} steps/s")
    print(f"encoder, rollout batch {batch}: {1000 * encode_s:.1f} ms/frame; filling the BC cache (batch 32): "
          f"{1000 * cache_s:.1f} ms/frame")  # fmt: skip
    print(f"extractor + head per action: {1000 * head_s:.2f} ms")
    print(f"one BC training step (batch {args.bc_batch}, MAP on cached tokens): {1000 * bc_s:.0f} ms")

    rates = {}
    for num_envs in args.num_envs:
        episodes = max(args.episodes, num_envs)
        _, _, seconds, steps = run_episodes(
            policy, args.task, episodes, seed=100_000, num_envs=num_envs, horizon=args.horizon,
            image_size=args.image_size, progress=False,
        )  # fmt: skip
        rates[num_envs] = steps / seconds
        print(f"policy in the loop, {num_envs} env(s): {steps} env steps in {seconds:.1f} s = {rates[num_envs]:.1f}/s")
    base = min(rates)
    for num_envs, rate in rates.items():
        print(f"ratio {num_envs} envs vs {base}: {rate / rates[base]:.2f}x")
    workers = max(args.num_envs)
    auto, every = policy_threads(workers, torch.get_num_threads()), torch.get_num_threads()
    if workers > 1 and auto != every:  # the policy's thread count beside the render workers, alternated A B A B
        thread_rates: dict[int, list[float]] = {auto: [], every: []}
        for _ in range(2):
            for threads in (every, auto):
                _, _, seconds, steps = run_episodes(
                    policy, args.task, max(args.episodes, workers), seed=100_000, num_envs=workers,
                    horizon=args.horizon, image_size=args.image_size, progress=False, threads=threads,
                )  # fmt: skip
                thread_rates[threads].append(steps / seconds)
        auto_rate, every_rate = np.mean(thread_rates[auto]), np.mean(thread_rates[every])
        print(
            f"policy threads beside {workers} render workers: {auto} (the default) {auto_rate:.1f} env steps/s vs "
            f"{every} (every core) {every_rate:.1f}: {auto_rate / every_rate:.2f}x"
        )

    from voltron.policy.suite import SuiteOptions, resolve_options

    protocol = resolve_options(SuiteOptions(encoders=[args.encoder]))  # the defaults of `voltron eval-suite`
    best = max(rates.values())
    policies = 5 * protocol.seeds * len(protocol.demos_per_task)
    episodes = protocol.episodes + (protocol.checkpoints - 1) * protocol.checkpoint_episodes  # per policy
    demo_frames = 5 * max(protocol.demos_per_task) * 120  # demos of about 120 steps per task
    bc_total = policies * protocol.steps * bc_s
    cache_total = demo_frames * cache_s
    worst = policies * episodes * 500 / best
    typical = policies * episodes * args.mean_length / best
    print(
        f"projected default protocol (5 tasks x {protocol.seeds} seeds x {protocol.demos_per_task} demos, "
        f"{protocol.steps} BC steps, {protocol.episodes} final + {protocol.checkpoints - 1} x "
        f"{protocol.checkpoint_episodes} checkpoint episodes per policy), one encoder: BC training "
        f"{bc_total / 3600:.2f} h + demo encoding {cache_total / 3600:.2f} h + rollouts {typical / 3600:.2f} h at "
        f"{args.mean_length:.0f} steps per episode = {(bc_total + cache_total + typical) / 3600:.2f} h "
        f"(worst case, every episode to 500 steps: {(bc_total + cache_total + worst) / 3600:.2f} h)"
    )


if __name__ == "__main__":
    main()
