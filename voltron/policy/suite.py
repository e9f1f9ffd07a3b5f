"""`voltron eval-suite`: demos -> one policy per (encoder, task, seed) -> evaluation -> one table and one chart.

Every stage is cached on disk (demo files, policy run dirs, per-policy results.json), so re-running the suite
only does what is missing. Evaluation seeds start at EVAL_SEED_OFFSET, disjoint from the demo seeds, so no
evaluation episode starts where a demonstration did.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from voltron.io import atomic_write_bytes, atomic_write_json
from voltron.policy.evaluate import EvalResult, evaluate, wilson_interval

EVAL_SEED_OFFSET = 100_000


def suite_tasks(name: str) -> tuple[str, ...]:
    from voltron.sim.tasks import EVAL_TASKS

    suites = {"metaworld5": EVAL_TASKS}
    if name not in suites:
        raise KeyError(f"unknown suite {name!r}; expected one of {sorted(suites)}")
    return suites[name]


@dataclass
class SuiteOptions:
    encoders: list[str]
    suite: str = "metaworld5"
    tasks: list[str] | None = None  # default: the suite's tasks
    demos_per_task: int = 25
    seeds: int = 3
    episodes: int = 50
    out: str = "runs/eval-suite"
    num_envs: int = 2
    horizon: int | None = None
    steps: int = 2000
    image_size: int = 224
    labels: list[str] | None = None  # display names for the encoders (default: their ids or folder names)
    random_init: list[bool] | None = None  # per encoder: evaluate its architecture randomly initialised
    train_overrides: list[str] = field(default_factory=list)
    progress: bool = True


@dataclass
class SuiteTable:
    tasks: list[str]
    rows: dict[str, dict[str, dict[str, float]]]  # encoder label -> task (and "mean") -> rate, ci_low, ci_high, n

    def markdown(self) -> str:
        header = "| encoder | " + " | ".join(self.tasks) + " | mean |"
        lines = [header, "|" + "---|" * (len(self.tasks) + 2)]
        for label, cells in self.rows.items():
            parts = [
                f"{cells[t]['rate']:.0%} ({cells[t]['ci_low']:.0%}-{cells[t]['ci_high']:.0%})"
                for t in [*self.tasks, "mean"]
            ]
            lines.append(f"| {label} | " + " | ".join(parts) + " |")
        return "\n".join(lines)


def encoder_label(encoder: str, random_init: bool) -> str:
    name = Path(encoder).name if Path(encoder).expanduser().is_dir() else encoder
    return f"{name} (random init)" if random_init else name


def ensure_demos(task: str, count: int, out: Path, image_size: int, progress: bool) -> Path:
    """Scripted-expert demos at the task's own horizon (the expert needs it; `horizon` only bounds evaluation)."""
    from voltron.sim.collect import collect

    path = out / "demos" / f"{task}.hdf5"
    if not path.is_file():
        collect(task, count, path, seed=0, image_size=image_size, progress=progress)
    return path


def train_and_evaluate(
    options: SuiteOptions, encoder: str, random_init: bool, task: str, seed: int, demos: Path, run: Path
) -> EvalResult:
    from voltron.policy.config import load_bc_config
    from voltron.policy.train import train_policy

    result_path = run / "eval" / "results.json"
    if result_path.is_file():
        return EvalResult(**json.loads(result_path.read_text())[0])
    if not (run / "model.safetensors").is_file():
        overrides = [
            f"--policy.encoder={encoder}",
            f"--policy.pretrained={str(not random_init).lower()}",
            f"--policy.seed={seed}",
            f"--train.steps={options.steps}",
            *options.train_overrides,
        ]
        train_policy(load_bc_config(None, overrides), demos, run, progress=options.progress)
    return evaluate(
        run, task, options.episodes, EVAL_SEED_OFFSET + 1000 * seed, options.num_envs, options.horizon,
        run / "eval", videos=2, progress=options.progress,
    )  # fmt: skip


def aggregate(results: list[EvalResult]) -> dict[str, float]:
    """Pooled success over every episode of every seed, with its Wilson interval."""
    successes, trials = sum(r.successes for r in results), sum(r.episodes for r in results)
    low, high = wilson_interval(successes, trials)
    return {"rate": successes / max(trials, 1), "ci_low": low, "ci_high": high, "n": trials}


def run_eval_suite(options: SuiteOptions) -> SuiteTable:
    out = Path(options.out)
    tasks = list(options.tasks or suite_tasks(options.suite))
    randoms = options.random_init or [False] * len(options.encoders)
    labels = options.labels or [encoder_label(e, r) for e, r in zip(options.encoders, randoms)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"encoder labels must be distinct; got {labels}")
    rows: dict[str, dict[str, dict[str, float]]] = {}
    all_results: dict[str, dict[str, list[EvalResult]]] = {}
    for encoder, random_init, label in zip(options.encoders, randoms, labels):
        rows[label], all_results[label] = {}, {}
        for task in tasks:
            demos = ensure_demos(task, options.demos_per_task, out, options.image_size, options.progress)
            results = []
            for seed in range(options.seeds):
                run = out / "policies" / _slug(label) / task / f"seed{seed}"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    results.append(train_and_evaluate(options, encoder, random_init, task, seed, demos, run))
            rows[label][task] = aggregate(results)
            all_results[label][task] = results
        # every task has the same number of episodes, so the pooled rate is the mean of the task rates
        rows[label]["mean"] = aggregate([r for t in tasks for r in all_results[label][t]])
    table = SuiteTable(tasks, rows)
    runs = {label: {t: [asdict(r) for r in rs] for t, rs in by_task.items()} for label, by_task in all_results.items()}
    atomic_write_json(out / "results.json", {"tasks": tasks, "rows": rows, "runs": runs})
    atomic_write_bytes(out / "results.md", (table.markdown() + "\n").encode())
    plot_suite(table, out / "success.png")
    return table


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def plot_suite(table: SuiteTable, path: Path) -> Path:
    """Grouped bars: tasks (and the mean) on x, one bar per encoder, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = [*table.tasks, "mean"]
    labels = list(table.rows)
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(1.5 * len(columns) + 2, 3.5))
    for i, label in enumerate(labels):
        cells = [table.rows[label][c] for c in columns]
        x = np.arange(len(columns)) + (i - (len(labels) - 1) / 2) * width
        rates = [c["rate"] for c in cells]
        errors = [[c["rate"] - c["ci_low"] for c in cells], [c["ci_high"] - c["rate"] for c in cells]]
        ax.bar(x, rates, width, yerr=errors, capsize=3, label=label)
    ax.set_xticks(np.arange(len(columns)), columns, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate (95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
