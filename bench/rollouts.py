"""Rollout throughput of one saved policy on one task: env steps/s, successes and episode lengths.

    MUJOCO_GL=egl .venv/bin/python bench/rollouts.py POLICY_DIR TASK [--episodes 10] [--num-envs 2] [--log FILE]

It only calls `voltron.policy.evaluate.run_episodes`, so the same script runs in another checkout's venv too
(`OTHER/.venv/bin/python bench/rollouts.py ...` imports that checkout's voltron): alternate the two under
`farm-bench -n 2 --vs "..." -- ...` for a side-by-side ratio of two versions of the rollout loop. Episodes start at
the evaluation seeds (100000 on), with the task's horizon; `--log` appends the printed line to FILE.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy")
    parser.add_argument("task")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--log", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import voltron
    from voltron.policy import load_policy
    from voltron.policy.evaluate import run_episodes

    policy = load_policy(args.policy)
    records, _, seconds, steps = run_episodes(
        policy, args.task, args.episodes, num_envs=args.num_envs, image_size=int(policy.image_size or 224),
        progress=False,
    )  # fmt: skip
    line = (
        f"{voltron.__file__}: {args.task}, {args.num_envs} envs: {steps} env steps in {seconds:.1f} s = "
        f"{steps / seconds:.1f}/s; {sum(r['success'] for r in records)}/{len(records)} successes; "
        f"lengths {[r['length'] for r in records]}"
    )
    print(line)
    if args.log:
        with open(args.log, "a") as log:
            log.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
