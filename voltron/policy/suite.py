"""`voltron eval-suite`: the frozen-representation protocol (R3M / CortexBench) over a task suite, with reference rows.

For every task: scripted-expert demos (reset seeds from 0), then one policy per (row, demo count, seed), each
evaluated at its intermediate checkpoints and at the end, then one table, a bar chart and a learning curve.

Rows: a **state oracle** (BC on the simulator's privileged low-dim state: it checks that the harness can succeed;
a task where it stays below `ORACLE_MIN` is reported as broken), a **proprio-only floor** (what a policy gets
without looking at the image), then one row per encoder, shown with its margin over the floor.

Every stage is cached on disk (demo files, policy run dirs, per-evaluation episodes.jsonl/results.json), so
re-running the suite, or resuming it after a kill, only does what is missing. Evaluation seeds start at
EVAL_SEED_OFFSET, disjoint from the demo seeds, so no evaluation episode starts where a demonstration did.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from voltron.errors import UserError
from voltron.io import atomic_write_bytes, atomic_write_json
from voltron.policy.evaluate import (
    EVAL_SEED_OFFSET,
    EvalResult,
    code_version,
    evaluate,
    pyplot,
    save_figure,
    wilson_interval,
)

ORACLE_MIN = 0.8  # below this state-oracle success a task measures the harness, not the encoder
ORACLE, FLOOR = "state oracle", "proprio only"


@dataclass(frozen=True)
class SuiteSpec:
    tasks: tuple[str, ...]
    camera: str  # the default view, chosen from what it shows (see the README's evaluation section)
    views: tuple[str, ...] = ()  # several: one policy per view, rows per view and their mean (the paper's kitchen)
    dart_noise: float = 0.0  # the demos' DART noise (executed, not recorded; sim/collect.py), from the oracle's rate
    steps: int = 2000  # BC steps at batch 256 (train.batch_size), enough for the state oracle to converge


def suite_spec(name: str) -> SuiteSpec:
    from voltron.sim.tasks import EVAL_TASKS, KITCHEN_TASKS

    # MetaWorld: `corner3` sees the peg and nut (assembly), both bins (bin-picking), hammer and nail, drawer and
    # button unoccluded; from `corner` the arm hides assembly's red peg, and `topview` shrinks them to a few pixels.
    # Franka Kitchen (R3M, Voltron): both of R3M's views, each its own policy, reported per view and averaged. Its
    # demos carry DART noise 0.03 (about the cloned policy's own action error): over 2 seeds x 20 episodes the state
    # oracle went from 50% to 70% on the knob, 65% to 85% on the microwave and 75% to 95% on the light (README); at
    # 0.1 the microwave expert fails 4 attempts in 5 and the knob oracle falls to 30%.
    # And 6000 BC steps: with the DART demos, 2000 left the knob oracle at 70%; 6000 gave 82% on the knob and 88% on
    # the microwave (2 seeds x 20 episodes; bench/kitchen_oracle.py). MetaWorld's oracle is at 91-100% with 2000.
    suites = {
        "metaworld5": SuiteSpec(EVAL_TASKS, "corner3"),
        "kitchen5": SuiteSpec(
            tuple(KITCHEN_TASKS), "left_cap2", ("left_cap2", "right_cap2"), dart_noise=0.03, steps=6000
        ),
    }
    if name not in suites:
        raise KeyError(f"unknown suite {name!r}; expected one of {sorted(suites)}")
    return suites[name]


@dataclass
class SuiteOptions:
    """The protocol; every field is written into results.json. Defaults follow R3M/CortexBench where they fit
    this machine (see the README): 25 demos, 3 seeds, 50 final episodes, the task's 500-step horizon."""

    encoders: list[str] = field(default_factory=list)  # encoder ids or run dirs; none: only the reference rows
    suite: str = "metaworld5"
    tasks: list[str] | None = None  # default: the suite's tasks
    demos_per_task: list[int] = field(default_factory=lambda: [25])  # a sweep, e.g. [5, 10, 25]
    seeds: int = 3
    episodes: int = 50  # final evaluation episodes per policy
    checkpoints: int = 4  # evaluations over training (the last is the final one); R3M/CortexBench report the best
    checkpoint_episodes: int = 10  # episodes per intermediate evaluation (R3M: 50; fewer to fit 2 cores); 0: `episodes`
    out: str = "runs/eval-suite"
    num_envs: int = 2
    horizon: int | None = None  # default: the task's (500 for MetaWorld)
    # BC steps at batch 256 (train.batch_size); None: the suite's (SuiteSpec.steps): 2000 for metaworld5 (512k
    # samples; R3M's 20k x 32 = 640k), 6000 for kitchen5
    steps: int | None = None
    image_size: int = 112
    camera: str | None = None  # default: the suite's views (each its own policy), or its camera
    labels: list[str] | None = None  # display names for the encoders (default: their ids or folder names)
    random_init: list[bool] | None = None  # per encoder: evaluate its architecture randomly initialised
    references: bool = True  # the state-oracle and proprio-only rows
    dart_noise: float | None = None  # DART noise std in demo collection (None: the suite's, SuiteSpec.dart_noise)
    train_overrides: list[str] = field(default_factory=list)
    progress: bool = True


@dataclass
class Row:
    label: str
    encoder: str  # "none" for the reference rows
    random_init: bool = False
    lowdim: str = "proprio"


@dataclass
class SuiteTable:
    tasks: list[str]
    rows: dict[str, dict[str, dict[str, float]]]  # row label -> task (and "mean") -> rate, ci_low, ci_high, n, best
    broken: list[str] = field(default_factory=list)  # tasks whose state oracle is below ORACLE_MIN
    margins: dict[str, dict[str, float]] = field(default_factory=dict)  # row -> mean - floor mean, with a 95% CI
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it has no column (no expert demos)

    def markdown(self) -> str:
        heads = [f"{t} (broken: oracle < {ORACLE_MIN:.0%})" if t in self.broken else t for t in self.tasks]
        header = "| policy | " + " | ".join(heads) + " | mean | best ckpt (mean) | vs proprio only |"
        lines = [header, "|" + "---|" * (len(self.tasks) + 4)]
        for label, cells in self.rows.items():
            parts = [
                f"{cells[t]['rate']:.0%} ({cells[t]['ci_low']:.0%}-{cells[t]['ci_high']:.0%})"
                for t in [*self.tasks, "mean"]
            ]
            parts.append(f"{cells['mean']['best']:.0%}")
            margin = self.margins.get(label)
            parts.append(
                f"{margin['diff']:+.0%} ({margin['ci_low']:+.0%} to {margin['ci_high']:+.0%})" if margin else ""
            )
            lines.append(f"| {label} | " + " | ".join(parts) + " |")
        lines += [f"\nNot run: {task} ({why})" for task, why in self.skipped.items()]
        return "\n".join(lines)


def encoder_label(encoder: str, random_init: bool) -> str:
    name = Path(encoder).name if Path(encoder).expanduser().is_dir() else encoder
    return f"{name} (random init)" if random_init else name


def ensure_demos(
    task: str, count: int, out: Path, image_size: int, camera: str, progress: bool, dart_noise: float = 0.0
) -> Path:
    """Scripted-expert demos (reset seeds 0, 1, ...) at the task's own horizon, every one in the train split (a
    demo-count sweep trains on the first N); they carry the simulator state for the state oracle. `dart_noise`
    names the file too, so demos of different noise are never mixed. An expert that succeeds but cannot make `count`
    demos within the collector's attempts is an error, and no file is kept: a suite must not train on fewer demos
    than it says. One that never succeeds raises NoSuccessfulEpisodes, which the suite reports as a task not run."""
    from voltron.sim.collect import collect

    noise = f"-dart{dart_noise:g}" if dart_noise else ""
    path = out / "demos" / f"{task}-{count}x{image_size}px-{camera}{noise}.hdf5"
    if not path.is_file():
        with _Timing(path.with_name(f"{path.stem}.timing.json")).stage("collect_s"):
            _, stats = collect(
                task, count, path, seed=0, image_size=image_size, camera=camera, valid_fraction=0.0,
                progress=progress, dart_noise=dart_noise,
            )  # fmt: skip
        if stats.successes < count:
            path.unlink()
            raise UserError(
                f"{path}: the {task} expert succeeded in {stats.successes} of {stats.attempts} attempts, fewer than "
                f"the {count} demos asked, so no demo file was kept", key="dart_noise", value=dart_noise,
                expected="a task and noise the expert solves (see voltron sim collect's success rate)",
            )  # fmt: skip
    return path


def _load_result(path: Path) -> EvalResult | None:
    return EvalResult(**json.loads(path.read_text())[0]) if path.is_file() else None


def train_and_evaluate(
    options: SuiteOptions, row: Row, task: str, n_demos: int, seed: int, demos: Path, run: Path, token_cache: dict,
    view: str | None = None,
) -> tuple[EvalResult, list[dict[str, Any]]]:  # fmt: skip
    """The final evaluation, and the learning curve [{step, rate, episodes}] over the checkpoints."""
    from voltron.policy.config import load_bc_config
    from voltron.policy.train import CHECKPOINTS_DIR, train_policy

    options = resolve_options(options)

    every = max(1, options.steps // max(1, options.checkpoints))
    timing = _Timing(run / "timing.json")  # where this policy's wall time went; kept across resumes
    _check_trained_on(run, demos)
    if not (run / "model.safetensors").is_file():
        overrides = [
            f"--policy.encoder={row.encoder}",
            f"--policy.pretrained={str(not row.random_init).lower()}",
            f"--policy.lowdim={row.lowdim}",
            f"--policy.seed={seed}",
            f"--train.steps={options.steps}",
            f"--train.max_episodes={n_demos}",
            f"--train.checkpoint_every={every if options.checkpoints > 1 else 0}",
            *([f"--policy.camera={view}"] if view else []),
            *options.train_overrides,
        ]
        if row.random_init:  # the architecture at the rendered size (a pretrained encoder keeps its own)
            overrides.append(f"--policy.encoder_overrides={{image_size: {options.image_size}}}")
        with timing.stage("train_s"):
            train_policy(
                load_bc_config(None, overrides), demos, run, progress=options.progress, token_cache=token_cache
            )
    eval_seed = EVAL_SEED_OFFSET + 1000 * seed
    common = dict(num_envs=options.num_envs, horizon=options.horizon, progress=options.progress)
    curve = []
    for path in sorted((run / CHECKPOINTS_DIR).glob("step_*.safetensors")):
        step = int(path.stem.removeprefix("step_"))
        if step == options.steps:
            continue  # the final weights: evaluated below with the full episode count
        out = run / "eval" / path.stem
        episodes = options.checkpoint_episodes or options.episodes
        result = _load_result(out / "results.json")
        if result is None:
            with timing.stage("eval_s"):
                result = evaluate(run, task, episodes, eval_seed, out_dir=out, videos=0, checkpoint=path, **common)
        curve.append({"step": step, "rate": result.success_rate, "episodes": result.episodes})
    final = _load_result(run / "eval" / "results.json")
    if final is None:
        with timing.stage("eval_s"):
            final = evaluate(run, task, options.episodes, eval_seed, out_dir=run / "eval", videos=2, **common)
    curve.append({"step": options.steps, "rate": final.success_rate, "episodes": final.episodes})
    return final, curve


def _check_trained_on(run: Path, demos: Path) -> None:
    """A cached policy is reused only if it was trained on a demo file of this name (task, count, image size,
    camera, DART noise): an --out of an earlier protocol would otherwise mix its policies into this one's table."""
    config = run / "config.json"
    if not (run / "model.safetensors").is_file() or not config.is_file():
        return
    trained_on = json.loads(config.read_text()).get("training", {}).get("demos")
    if trained_on and Path(trained_on).name != demos.name:
        raise UserError(
            f"a policy trained on {Path(trained_on).name}, but this protocol's demos are {demos.name}",
            source=run,
            expected="a new --out for a changed protocol (or delete the policies folder)",
        )


class _Timing:
    """Wall seconds per stage of one suite step, accumulated in a JSON file written after each stage (so a
    resumed suite still reports the stages its earlier, killed run finished; a stage cut short is not counted)."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        atomic_write_json(self.path, self.seconds)


def wall_times(out: Path, tasks: list[str], labels: list[str]) -> dict[str, dict[str, float]]:
    """Wall seconds the suite spent, from its timing files: demo collection, and per row BC training and
    evaluation rollouts (every seed, task and checkpoint)."""
    demos = [_Timing(path).seconds.get("collect_s", 0.0) for path in (out / "demos").glob("*.timing.json")]
    times = {"demos": {"collect_s": sum(demos)}}
    for label in labels:
        row = {"train_s": 0.0, "eval_s": 0.0}
        for task in tasks:
            for path in (out / "policies" / _slug(label) / task).glob("seed*/timing.json"):
                for key, value in _Timing(path).seconds.items():
                    row[key] = row.get(key, 0.0) + value
        times[label] = row
    times["total_s"] = sum(v for part in times.values() for v in part.values())  # type: ignore[union-attr]
    return times


def aggregate(results: list[EvalResult], curves: list[list[dict[str, Any]]] | None = None) -> dict[str, float]:
    """Pooled final success over every episode of every seed with its Wilson interval, and `best`: the mean over
    seeds of each policy's best checkpoint (R3M's "max success over training")."""
    successes, trials = sum(r.successes for r in results), sum(r.episodes for r in results)
    low, high = wilson_interval(successes, trials)
    cell = {"rate": successes / max(trials, 1), "ci_low": low, "ci_high": high, "n": trials}
    if curves:
        cell["best"] = sum(max(p["rate"] for p in curve) for curve in curves) / len(curves)
    return cell


def margin(cell: dict[str, float], floor: dict[str, float], z: float = 1.96) -> dict[str, float]:
    """Difference of two pooled success rates with a 95% (Wald) interval."""
    p, q = cell["rate"], floor["rate"]
    half = z * math.sqrt(p * (1 - p) / max(cell["n"], 1) + q * (1 - q) / max(floor["n"], 1))
    return {"diff": p - q, "ci_low": p - q - half, "ci_high": p - q + half}


def suite_rows(options: SuiteOptions) -> list[Row]:
    from voltron.policy.config import NO_ENCODER

    randoms = options.random_init or [False] * len(options.encoders)
    labels = options.labels or [encoder_label(e, r) for e, r in zip(options.encoders, randoms)]
    rows = [Row(ORACLE, NO_ENCODER, lowdim="state"), Row(FLOOR, NO_ENCODER)] if options.references else []
    rows += [Row(label, e, r) for e, r, label in zip(options.encoders, randoms, labels)]
    names = [r.label for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"row labels must be distinct; got {names}")
    return rows


def resolve_options(options: SuiteOptions) -> SuiteOptions:
    """`options` with the suite's own values where a field is None (BC steps, DART noise)."""
    spec = suite_spec(options.suite)
    return replace(
        options,
        steps=spec.steps if options.steps is None else options.steps,
        dart_noise=spec.dart_noise if options.dart_noise is None else options.dart_noise,
    )


def run_eval_suite(options: SuiteOptions) -> SuiteTable:
    from voltron.sim.collect import NoSuccessfulEpisodes  # (imports MuJoCo)

    options = resolve_options(options)
    out = Path(options.out)
    spec = suite_spec(options.suite)
    tasks = list(options.tasks or spec.tasks)
    camera = options.camera or spec.camera
    views = (options.camera,) if options.camera else (spec.views or (camera,))
    counts = sorted(set(options.demos_per_task))
    if not counts or counts[0] < 1 or options.seeds < 1 or options.episodes < 1:
        raise ValueError(
            f"demos_per_task={options.demos_per_task}, seeds={options.seeds}, episodes={options.episodes}: "
            "each must be at least 1"
        )
    rows = suite_rows(options)
    # (row, demo count, view) -> table label; the reference rows see no image, so they run once (view None)
    labels = {
        (row.label, n, view): _row_label(row.label, n if len(counts) > 1 else None, view if len(views) > 1 else None)
        for row in rows
        for n in counts
        for view in _row_views(row, views)
    }
    results: dict[str, dict[str, list[EvalResult]]] = {label: {} for label in labels.values()}
    curves: dict[str, dict[str, list[list[dict[str, Any]]]]] = {label: {} for label in labels.values()}
    skipped: dict[str, str] = {}
    for task in tasks:
        try:
            demos = ensure_demos(
                task, counts[-1], out, options.image_size, camera, options.progress, options.dart_noise
            )
        except NoSuccessfulEpisodes as error:  # reported as not run, not as 0%: nothing measured the encoders
            skipped[task] = f"the scripted expert never succeeded, so there are no demos: {error}"
            continue
        for row in rows:
            for view in _row_views(row, views):
                token_cache: dict = {}  # one encoding of the demos serves every seed and demo count of this row
                for n in counts:
                    label = labels[(row.label, n, view)]
                    for seed in range(options.seeds):
                        run = out / "policies" / _slug(label) / task / f"seed{seed}"
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            final, curve = train_and_evaluate(
                                options, row, task, n, seed, demos, run, token_cache, view if len(views) > 1 else None
                            )
                        results[label].setdefault(task, []).append(final)
                        curves[label].setdefault(task, []).append(curve)
    tasks = [task for task in tasks if task not in skipped]
    if not tasks:
        raise NoSuccessfulEpisodes(f"no task of the suite has expert demos: {skipped}")
    if len(views) > 1:  # the paper's number: each encoder row pooled over its views (equal episodes per view)
        for row in rows:
            for n in counts:
                if len(_row_views(row, views)) < 2:
                    continue
                mean_label = _row_label(row.label, n if len(counts) > 1 else None, "mean of views")
                per_view = [labels[(row.label, n, view)] for view in views]
                results[mean_label] = {t: [r for v in per_view for r in results[v][t]] for t in tasks}
                curves[mean_label] = {t: [c for v in per_view for c in curves[v][t]] for t in tasks}
                labels[(row.label, n, "mean")] = mean_label
    table_rows = {
        label: {
            **{t: aggregate(results[label][t], curves[label][t]) for t in tasks},
            # every task has the same number of episodes, so the pooled rate is the mean of the task rates
            "mean": aggregate(
                [r for t in tasks for r in results[label][t]], [c for t in tasks for c in curves[label][t]]
            ),
        }
        for label in results
    }
    broken: list[str] = []
    margins: dict[str, dict[str, float]] = {}
    if options.references:
        for n in counts:
            oracle, floor = table_rows[labels[(ORACLE, n, None)]], table_rows[labels[(FLOOR, n, None)]]
            broken += [t for t in tasks if oracle[t]["best"] < ORACLE_MIN and t not in broken]
            for (label, count, _), table_label in labels.items():
                if count == n and label not in (ORACLE, FLOOR):
                    margins[table_label] = margin(table_rows[table_label]["mean"], floor["mean"])
    table = SuiteTable(tasks, table_rows, broken, margins, skipped)
    protocol = {**asdict(options), "camera": camera, "views": list(views), "tasks": tasks, "oracle_min": ORACLE_MIN}
    runs = {label: {t: [asdict(r) for r in rs] for t, rs in by_task.items()} for label, by_task in results.items()}
    times = wall_times(out, tasks, [labels[key] for key in labels if key[2] != "mean"])
    atomic_write_json(
        out / "results.json",
        {
            "protocol": protocol, "code_version": code_version(), "tasks": tasks, "row_order": list(table_rows),
            "rows": table_rows,
            "broken_tasks": broken, "skipped_tasks": skipped, "margins_vs_proprio_only": margins, "curves": curves,
            "runs": runs, "wall_seconds": times,
        },
    )  # fmt: skip
    note = protocol_note(protocol) + "\n\n" + table.markdown() + "\n\n" + wall_time_note(times) + "\n"
    atomic_write_bytes(out / "results.md", note.encode())
    plot_suite(table, out / "success.png")
    plot_curves(curves, out / "learning_curve.png")
    return table


def _row_views(row: Row, views: tuple[str, ...]) -> tuple[str | None, ...]:
    from voltron.policy.config import NO_ENCODER

    return (None,) if row.encoder == NO_ENCODER else views


def _row_label(label: str, n_demos: int | None, view: str | None) -> str:
    """ "v-cond", or with a demo count and a view: "v-cond, 10 demos [left_cap2]"."""
    text = label if n_demos is None else f"{label}, {n_demos} demos"
    return text if view is None else f"{text} [{view}]"


def protocol_note(protocol: dict[str, Any]) -> str:
    episodes = protocol["checkpoint_episodes"] or protocol["episodes"]
    dart = f" (DART noise {protocol['dart_noise']:g})" if protocol.get("dart_noise") else ""
    return (
        f"Protocol: {protocol['suite']} ({', '.join(protocol['tasks'])}), "
        f"view(s) {', '.join(f'`{v}`' for v in protocol.get('views') or [protocol['camera']])} at "
        f"{protocol['image_size']} px, {'/'.join(map(str, protocol['demos_per_task']))} demos per task"
        f"{dart}, {protocol['seeds']} seed(s), "
        f"{protocol['steps']} BC steps (cosine), final evaluation {protocol['episodes']} episodes per policy in "
        f"eval mode on unseen seeds (from {EVAL_SEED_OFFSET}), horizon {protocol['horizon'] or 'the task default'} steps. "
        f"Cells: final checkpoint's success, pooled over seeds (95% Wilson interval). Best ckpt: R3M's max over "
        f"{protocol['checkpoints']} evaluations during training ({episodes} episodes each), mean over tasks and seeds."
    )


def wall_time_note(times: dict[str, Any]) -> str:
    parts = [f"demos {times['demos']['collect_s'] / 60:.1f}"]
    parts += [
        f"{label}: BC {row['train_s'] / 60:.1f} + rollouts {row['eval_s'] / 60:.1f}"
        for label, row in times.items()
        if label not in ("demos", "total_s")
    ]
    return f"Wall time (min, summed over the runs that did the work): {'; '.join(parts)}; total {times['total_s'] / 60:.1f}."


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def plot_suite(table: SuiteTable, path: Path) -> Path:
    """Grouped bars: tasks (and the mean) on x, one bar per row, 95% intervals as error bars."""
    import numpy as np

    plt = pyplot()
    columns = [*table.tasks, "mean"]
    labels = list(table.rows)
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 2, 3.8))
    for i, label in enumerate(labels):
        cells = [table.rows[label][c] for c in columns]
        x = np.arange(len(columns)) + (i - (len(labels) - 1) / 2) * width
        rates = [c["rate"] for c in cells]
        errors = [[c["rate"] - c["ci_low"] for c in cells], [c["ci_high"] - c["rate"] for c in cells]]
        hatch = "//" if label.startswith((ORACLE, FLOOR)) else None
        ax.bar(x, rates, width, yerr=errors, capsize=3, label=label, hatch=hatch)
    names = [f"{c}\n(broken)" if c in table.broken else c for c in columns]
    ax.set_xticks(np.arange(len(columns)), names, rotation=20, fontsize=8)
    return save_figure(fig, ax, path, "final success (95% CI)")


def plot_curves(curves: dict[str, dict[str, list[list[dict[str, Any]]]]], path: Path) -> Path:
    """Success vs BC step per row: the mean over tasks and seeds at each evaluated checkpoint."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, by_task in curves.items():
        points: dict[int, list[float]] = {}
        for task_curves in by_task.values():
            for curve in task_curves:
                for point in curve:
                    points.setdefault(point["step"], []).append(point["rate"])
        steps = sorted(points)
        ax.plot(steps, [sum(points[s]) / len(points[s]) for s in steps], marker="o", label=label)
    ax.set_xlabel("behaviour-cloning step")
    return save_figure(fig, ax, path, "success (mean over tasks, seeds)")
