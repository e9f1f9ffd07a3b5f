"""`voltron train-policy`, `voltron eval`, `voltron eval-suite` and `voltron policy export`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from voltron.config import add_config_option, command_config, command_group, config_command
from voltron.models.inference_options import add_inference_arguments
from voltron.policy.evaluate import EVAL_SEED_OFFSET


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train-policy",
        help="behaviour cloning on demonstrations with a (frozen) voltron encoder",
        description="Dotted overrides set any policy/train config key, e.g. --train.steps=500 --policy.extractor=mean.",
        add_help=False,
    )
    train.add_argument("--demos", required=True, nargs="+", help="native HDF5 file(s), DROID folder(s), or a directory")
    train.add_argument("--encoder", help="registered model id or encoder checkpoint directory (policy.encoder)")
    train.add_argument("--out", required=True, help="run directory for the policy checkpoint and metrics")
    train.add_argument("--random-init", action="store_true", help="the encoder's architecture, randomly initialised")
    train.add_argument(
        "--bundle-encoder", action="store_true",
        help="copy the pretrained encoder into the run folder, so it runs on its own (same as --train.bundle_encoder=true)",
    )  # fmt: skip
    train.add_argument(
        "--overwrite", action="store_true",
        help="replace a policy already in --out (its files stay until the new policy is saved)",
    )  # fmt: skip
    train.add_argument("--no-progress", action="store_true")
    add_config_option(train, "voltron.policy.config:BCConfig", " (configs/policy/*.yaml)")
    train.set_defaults(func=run_train)

    ev = config_command(
        subparsers, "eval", "voltron.policy.config:EvalConfig", help="evaluate a policy on a MuJoCo task",
        description="Evaluate a policy on unseen seeds of one task (configs/eval/*.yaml).",
    )  # fmt: skip
    ev.add_argument("--policy", help="policy run directory (what train-policy wrote); required")
    ev.add_argument("--task", help="task name, e.g. drawer-open; required")
    ev.add_argument("--episodes", type=int)
    ev.add_argument(
        "--seed", type=int,
        help=f"first reset seed (default {EVAL_SEED_OFFSET}; demos start at 0, and seeds a demo used are refused)",
    )  # fmt: skip
    ev.add_argument("--allow-seed-overlap", action="store_true", help="evaluate on demo seeds anyway")
    ev.add_argument("--checkpoint", help="a CHECKPOINT_DIR/step_*.safetensors of the run instead of its final weights")
    ev.add_argument("--num-envs", type=int, help="environments stepped in parallel worker processes (default 2)")
    ev.add_argument("--horizon", type=int, help="max steps per episode (default: the task's, 500)")
    ev.add_argument("--videos", type=int, help="captioned MP4s of the first N episodes (default 3)")
    ev.add_argument("--out", help="output directory (default: POLICY/eval/TASK)")
    add_inference_arguments(ev, "the results' settings")
    for action in ev._actions:  # the config's values, unless given (set_defaults(x=SUPPRESS) would store the marker)
        if action.dest in ("precision", "inference_backend"):
            action.default = argparse.SUPPRESS
    ev.add_argument("--no-progress", dest="progress", action="store_false")
    ev.set_defaults(func=run_eval)

    suite = config_command(
        subparsers, "eval-suite", "voltron.policy.suite:SuiteOptions",
        help="collect demos, train and evaluate policies over a task suite",
        description="Demos, policies and evaluations for every encoder row, task and seed, with the reference rows "
        "(configs/eval/suite-small.yaml; e.g. --train_overrides='[--train.batch_size=64]').",
    )  # fmt: skip
    suite.add_argument(
        "--suite",
        help="task suite: metaworld5 (the five CortexBench tasks) or kitchen5 (R3M's Franka Kitchen, both views)",
    )
    suite.add_argument("--encoder", action="append", help="encoder id or run dir (repeatable)")
    suite.add_argument("--random-init", action="append", help="encoder id evaluated randomly initialised")
    suite.add_argument("--tasks", nargs="+", help="a subset of the suite's tasks, e.g. assembly hammer (default: all)")
    suite.add_argument("--demos-per-task", type=int, nargs="+", help="a sweep, e.g. 5 10 25 (default 25)")
    suite.add_argument("--seeds", type=int, help="policy training seeds per (row, task, demo count) (default 3)")
    suite.add_argument("--episodes", type=int, help="final evaluation episodes per policy (default 50)")
    suite.add_argument("--checkpoints", type=int, help="evaluations during training (best and final) (default 4)")
    suite.add_argument("--checkpoint-episodes", type=int, help="episodes per intermediate evaluation (default 10)")
    suite.add_argument("--out", help="output directory (default runs/eval-suite)")
    suite.add_argument("--num-envs", type=int)
    suite.add_argument("--horizon", type=int, help="evaluation steps per episode (default: the task's, 500)")
    suite.add_argument(
        "--steps",
        type=int,
        help="policy training steps (cosine schedule) (default: the suite's, 2000 or 6000 for kitchen5)",
    )
    suite.add_argument(
        "--dart-noise", type=float,
        help="std of the noise executed but not recorded in demo collection (DART) (default: the suite's, 0 or 0.03)",
    )  # fmt: skip
    suite.add_argument("--image-size", type=int, help="rendered frame size (demos and evaluation) (default 112)")
    suite.add_argument("--camera", help="camera (default: the suite's, corner3 for metaworld5)")
    suite.add_argument("--no-references", dest="references", action="store_false", help="skip the reference rows")
    suite.add_argument("--no-progress", dest="progress", action="store_false")
    suite.set_defaults(func=run_suite)

    policy_sub = command_group(subparsers, "policy", "policy folders: export one to run elsewhere (e.g. on a robot)")
    export = policy_sub.add_parser(
        "export",
        help="copy a policy to a new folder, verified, optionally with its encoder",
        description="Load the policy in SRC (verifying its encoder's SHA-256) and write it to the new folder DST. "
        "With --bundle-encoder the pretrained encoder it references is copied in too, so DST runs on its own "
        "(copy DST to the robot and `voltron ros serve --policy DST`). DST must not exist: nothing is overwritten.",
    )
    export.add_argument("src", help="policy folder (what train-policy wrote)")
    export.add_argument("dst", help="new folder for the exported policy")
    export.add_argument("--bundle-encoder", action="store_true", help="copy the referenced encoder into DST/encoder")
    export.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> int:
    import json

    from voltron.policy.config import load_bc_config
    from voltron.policy.train import train_policy

    overrides = [*([f"--policy.encoder={args.encoder}"] if args.encoder else []), *args.overrides]
    if args.random_init:
        overrides.append("--policy.pretrained=false")
    if args.bundle_encoder:
        overrides.append("--train.bundle_encoder=true")
    config = load_bc_config(args.config, overrides)
    demos = args.demos[0] if len(args.demos) == 1 else args.demos
    summary = train_policy(config, demos, args.out, progress=not args.no_progress, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    print(f"policy saved to {args.out}; evaluate it with: voltron eval --policy {args.out} --task TASK")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from voltron.config import RESOLVED_CONFIG, save_config
    from voltron.policy.config import EvalConfig
    from voltron.policy.evaluate import evaluate

    config = command_config(EvalConfig, args, "voltron eval", ("policy", "task"))
    result = evaluate(
        config.policy, config.task, config.episodes, config.seed, config.num_envs, config.horizon, config.out,
        config.videos, progress=config.progress, checkpoint=config.checkpoint,
        allow_seed_overlap=config.allow_seed_overlap, precision=config.precision, backend=config.inference_backend,
    )  # fmt: skip
    save_config(config, Path(config.out or Path(config.policy) / "eval" / config.task) / RESOLVED_CONFIG)
    print(result.summary())
    return 0


def run_export(args: argparse.Namespace) -> int:
    from voltron.policy.base import export_policy

    out = export_policy(args.src, args.dst, bundle_encoder=args.bundle_encoder)
    print(f"policy exported to {out}{' with its encoder' if args.bundle_encoder else ''}")
    return 0


def run_suite(args: argparse.Namespace) -> int:
    from voltron.config import RESOLVED_CONFIG, flag_overrides, parse_config, save_config
    from voltron.policy.suite import SuiteOptions, run_eval_suite

    flags = [f.name for f in dataclasses.fields(SuiteOptions) if f.name not in ("encoders", "random_init")]
    overrides = flag_overrides(args, flags)
    pretrained, random = getattr(args, "encoder", []), getattr(args, "random_init", [])
    if pretrained or random:  # --encoder/--random-init give the encoder rows (and replace the config file's)
        overrides += flag_overrides(argparse.Namespace(encoders=[*pretrained, *random]), ["encoders"])
        overrides += flag_overrides(argparse.Namespace(random_init=[False] * len(pretrained) + [True] * len(random)),
                                    ["random_init"])  # fmt: skip
    options = parse_config(SuiteOptions, args.config, overrides + args.overrides, prog="voltron eval-suite")
    save_config(options, Path(options.out) / RESOLVED_CONFIG)
    table = run_eval_suite(options)
    print(table.markdown())
    return 0
