"""Benchmark: the eval suite's state-oracle row alone, per task and variant (DART noise in the demos, BC overrides).

Run: .venv/bin/python bench/kitchen_oracle.py --out DIR --tasks kitchen-knob-on,kitchen-micro-open \
        --variant dart0=0 --variant dart0.03=0.03 --variant steps6000=0:--train.steps=6000

Each `--variant NAME=SIGMA[:OVERRIDE,...]` trains the suite's state oracle (the same `ensure_demos` and
`train_and_evaluate` as `voltron eval-suite`, at --demos demos, --seeds seeds, --episodes final episodes on the
suite's unseen evaluation seeds) on demos collected with DART noise SIGMA, with the BC overrides given. Without the
proprio-only row, image encoders or a second view, it costs about half of a reference-rows suite run. Demos and
policies are cached under DIR (demos per sigma, policies per variant), so a rerun only does what is missing.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from voltron.policy.evaluate import wilson_interval
from voltron.policy.suite import ORACLE, Row, SuiteOptions, ensure_demos, suite_spec, train_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--suite", default="kitchen5")
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--variant", action="append", required=True, help="NAME=SIGMA[:--override,...]")
    parser.add_argument("--demos", type=int, default=25)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=32, help="of the demos' frames (the oracle sees none)")
    args = parser.parse_args()
    from voltron.policy.config import NO_ENCODER

    camera = suite_spec(args.suite).camera
    row = Row(ORACLE, NO_ENCODER, lowdim="state")
    print(f"state oracle, {args.demos} demos, {args.seeds} seed(s), {args.episodes} unseen episodes each (95% Wilson)")
    print("| variant | " + " | ".join(args.tasks.split(",")) + " |")
    print("|---|" + "---|" * len(args.tasks.split(",")))
    for variant in args.variant:
        name, _, spec = variant.partition("=")
        sigma, _, overrides = spec.partition(":")
        options = SuiteOptions(
            suite=args.suite, steps=args.steps, checkpoints=1, episodes=args.episodes, image_size=args.image_size,
            train_overrides=[o for o in overrides.split(",") if o], num_envs=1,
        )  # fmt: skip
        cells = []
        for task in args.tasks.split(","):
            demos = ensure_demos(task, args.demos, args.out, args.image_size, camera, True, float(sigma))
            successes = 0
            for seed in range(args.seeds):
                run = args.out / "policies" / name / task / f"seed{seed}"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    final, _ = train_and_evaluate(options, row, task, args.demos, seed, demos, run, {})
                successes += final.successes
            trials = args.seeds * args.episodes
            low, high = wilson_interval(successes, trials)
            cells.append(f"{successes / trials:.0%} ({low:.0%}-{high:.0%})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
