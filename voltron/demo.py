"""`voltron demo`: the whole toolkit on one CPU machine, from rendered videos to evaluated robot policies.

1. make a small sim video-language corpus (MetaWorld tasks outside the evaluation suite);
2. preprocess it into the training store;
3. pretrain V-Cond at a small size for a fixed time budget;
4. collect scripted demonstrations for the five evaluation tasks;
5. train behaviour-cloning policies on the pretrained encoder, on the same architecture randomly initialised, and
   the two reference rows: a state oracle (the harness can succeed) and a proprio-only floor (no image);
6. evaluate every policy on all five tasks (eval mode, unseen seeds), and write runs/demo/REPORT.md with the table,
   the verdict with its interval, the learning curve, videos and config.

Every stage is cached: a second run reuses what the first finished. `--quick` runs the same stages at toy sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    corpus_tasks: int = 45  # corpus tasks (all 45 MetaWorld tasks outside the evaluation suite)
    clips_per_task: int = 2
    image_size: int = 112  # encoder input, corpus store and simulator frames
    pretrain_minutes: float = 6.0
    pretrain_model: str = "v-cond-tiny"
    pretrain_batch: int = 32
    demos_per_task: int = 25
    camera: str = "corner3"  # the metaworld5 suite's view: every task-relevant object is visible
    policy_steps: int = 1000
    policy_batch: int = 64
    policy_seeds: int = 1
    eval_episodes: int = 10  # final evaluation, per policy seed
    checkpoints: int = 2  # evaluations over training: one at half way, and the final one
    checkpoint_episodes: int = 5
    horizon: int = 200  # evaluation steps per episode; the experts finish in 75-220 (with 10 post-success steps)
    num_envs: int = 2
    seed: int = 0


QUICK_CONFIG = "demo-quick"  # configs/demo-quick.yaml: the same stages at toy sizes


def register(subparsers: argparse._SubParsersAction) -> None:
    from voltron.config import add_config_option

    parser = subparsers.add_parser(
        "demo", help="the whole pipeline end to end on this machine (about 30 minutes)", add_help=False,
        description="Settings come from the demo config (configs/demo.yaml; any key as a dotted override, e.g. "
        "--policy_steps=500); the resolved config is written to OUT/demo_config.json.",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"--config {QUICK_CONFIG}: toy sizes (a few minutes)")
    parser.add_argument("--out", help="output directory (default runs/demo, or runs/demo-quick with --quick)")
    parser.add_argument("--no-progress", action="store_true")
    add_config_option(parser, "voltron.demo:DemoConfig", " (configs/demo.yaml)")
    parser.set_defaults(func=run)


class Stages:
    """Runs named stages, timing each and recording whether it was reused from an earlier run."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def run(self, name: str, done: bool, fn):
        start = time.perf_counter()
        print(f"\n== {name}{' (cached)' if done else ''}", flush=True)
        result = None if done else fn()
        self.records.append({"stage": name, "cached": done, "seconds": round(time.perf_counter() - start, 1)})
        return result


def run_demo(config: DemoConfig, progress: bool = True) -> Path:
    import warnings

    from voltron.datasets.preprocess import PreprocessConfig, preprocess
    from voltron.io import atomic_write_json
    from voltron.models.checkpoints import WEIGHTS_NAME
    from voltron.policy.suite import SuiteOptions, ensure_demos, run_eval_suite
    from voltron.pretrain.config import load_config, to_dict
    from voltron.pretrain.trainer import pretrain
    from voltron.sim.corpus import make_corpus
    from voltron.sim.tasks import EVAL_TASKS

    warnings.filterwarnings("ignore", message=".*randomly initialised.*")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    corpus_dir, store_dir, pretrain_dir, suite_dir = out / "corpus", out / "store", out / "pretrain", out / "suite"

    stages.run(
        "1/6 sim corpus",
        (corpus_dir / "labels" / "validation.json").is_file(),
        lambda: make_corpus(
            corpus_dir,
            tasks=config.corpus_tasks,
            clips_per_task=config.clips_per_task,
            seed=config.seed,
            progress=progress,
        ),
    )
    prep = PreprocessConfig(
        corpus="sth-sth-v2", root=corpus_dir, out=store_dir, size=config.image_size, seed=config.seed,
        n_val=max(1, config.corpus_tasks // 4), progress=progress,
    )  # fmt: skip
    stages.run("2/6 preprocess", False, lambda: print(preprocess(prep).summary()))

    pretrain_config = load_config(
        None,
        [
            f"--run_dir={pretrain_dir}",
            f"--model.name={config.pretrain_model}",
            f"--model.image_size={config.image_size}",
            "--model.lang_cache_size=4096",
            f"--data.root={store_dir}",
            "--data.num_workers=1",
            f"--train.global_batch={config.pretrain_batch}",
            f"--train.device_batch={config.pretrain_batch}",
            "--train.epochs=1000",  # the time budget ends the run; the schedule is sized for a long one
            f"--train.max_minutes={config.pretrain_minutes}",
            f"--train.seed={config.seed}",
            "--optim.lr=1e-3",
            "--optim.warmup_epochs=1",
            "--checkpoint.every_steps=50",
            "--checkpoint.keep_last=2",
            "--log.every_steps=10",
            f"--log.progress={str(progress).lower()}",
        ],
    )
    stages.run("3/6 pretrain V-Cond", (pretrain_dir / WEIGHTS_NAME).is_file(), lambda: pretrain(pretrain_config))

    def demo_path(task: str) -> Path:
        return ensure_demos(task, config.demos_per_task, suite_dir, config.image_size, config.camera, progress)

    def collect_all() -> None:
        for task in EVAL_TASKS:
            demo_path(task)  # the task's own horizon: experts need it; `horizon` bounds evaluation

    demos_done = all(
        (suite_dir / "demos" / f"{t}-{config.demos_per_task}x{config.image_size}px-{config.camera}.hdf5").is_file()
        for t in EVAL_TASKS
    )
    stages.run("4/6 collect demonstrations", demos_done, collect_all)

    labels = ["V-Cond (pretrained here)", "V-Cond (random init)"]
    options = SuiteOptions(
        encoders=[str(pretrain_dir), str(pretrain_dir)], random_init=[False, True], labels=labels,
        tasks=list(EVAL_TASKS), demos_per_task=[config.demos_per_task], seeds=config.policy_seeds,
        episodes=config.eval_episodes, checkpoints=config.checkpoints, checkpoint_episodes=config.checkpoint_episodes,
        out=str(suite_dir), num_envs=config.num_envs, horizon=config.horizon, steps=config.policy_steps,
        image_size=config.image_size, camera=config.camera, progress=progress,
        train_overrides=[f"--train.batch_size={config.policy_batch}", "--train.log_every=20"],
    )  # fmt: skip
    table = stages.run("5-6/6 train and evaluate policies", False, lambda: run_eval_suite(options))

    atomic_write_json(
        out / "demo_config.json", {"demo": dataclasses.asdict(config), "pretrain": to_dict(pretrain_config)}
    )
    report = write_report(out, config, table, labels, stages.records)
    print("\n" + table.markdown())
    print(f"\nreport: {report}")
    return report


def write_report(out: Path, config: DemoConfig, table, labels: list[str], stages: list[dict]) -> Path:
    """REPORT.md: every number in it is read from this run's own files."""
    from voltron.io import atomic_write_bytes

    suite_dir = out / "suite"
    metrics = [
        json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    losses = [m["loss"] for m in metrics if "loss" in m]
    from voltron.policy.suite import FLOOR, ORACLE, margin

    pretrained, random_ = (table.rows[label]["mean"] for label in labels)
    diff = margin(pretrained, random_)
    if diff["ci_low"] > 0:
        verdict = "Pretraining helped"
    elif diff["ci_high"] < 0:
        verdict = "Pretraining hurt"
    else:
        verdict = "No detectable effect of pretraining"
    oracle, floor = table.rows[ORACLE], table.rows[FLOOR]
    zero = [t for t in table.tasks if oracle[t]["rate"] == 0]
    videos = sorted(suite_dir.glob("policies/*/*/seed0/eval/episode_000.mp4"))
    lines = [
        "# voltron demo report",
        "",
        f"**{verdict}**: mean final success {pretrained['rate']:.0%} with the encoder pretrained here vs "
        f"{random_['rate']:.0%} with the same architecture randomly initialised, a difference of "
        f"{diff['diff']:+.0%} (95% CI {diff['ci_low']:+.0%} to {diff['ci_high']:+.0%}; {pretrained['n']} evaluation "
        f"episodes per row over {len(table.tasks)} tasks).",
        "",
        f"References: the state oracle reaches {oracle['mean']['rate']:.0%} "
        + (
            f"(zero on {', '.join(zero)}: the harness fails there, not the encoder)"
            if zero
            else "(non-zero on every task)"
        )
        + f"; a policy that never looks at the image (proprio only) reaches {floor['mean']['rate']:.0%}."
        + (
            f" Tasks where the oracle is below 80% (broken at these settings): {', '.join(table.broken)}."
            if table.broken
            else ""
        ),
        "",
        "## Success rates (95% Wilson intervals)",
        "",
        (suite_dir / "results.md").read_text().strip(),
        "",
        "![success](suite/success.png)",
        "",
        "![learning curve](suite/learning_curve.png)",
        "",
        "## Pretraining",
        "",
        f"{config.pretrain_model} at {config.image_size} px for {config.pretrain_minutes} min: "
        f"{len(metrics)} logged steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        if losses
        else "no metrics logged",
        "",
        "## Stages",
        "",
        "| stage | cached | seconds |",
        "|---|---|---|",
        *[f"| {s['stage']} | {'yes' if s['cached'] else 'no'} | {s['seconds']} |" for s in stages],
        "",
        "## Videos (first evaluation episode of each policy)",
        "",
        *[f"- [{v.relative_to(out)}]({v.relative_to(out)})" for v in videos],
        "",
        "## Config",
        "",
        "```json",
        json.dumps(dataclasses.asdict(config), indent=2),
        "```",
        "",
        "The fully resolved pretraining config is in `demo_config.json`; per-policy results in "
        "`suite/policies/*/*/seed*/eval/results.json`.",
        "",
    ]
    path = out / "REPORT.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def run(args: argparse.Namespace) -> int:
    from voltron.config import flag_overrides, parse_config
    from voltron.errors import UserError

    if args.quick and args.config:
        raise UserError("--quick is --config demo-quick; give one of them", source="command line")
    path = QUICK_CONFIG if args.quick else args.config
    config = parse_config(DemoConfig, path, flag_overrides(args, ["out"]) + args.overrides, prog="voltron demo")
    run_demo(config, progress=not args.no_progress)
    return 0
