"""The `voltron sim` commands: `collect` (scripted-expert demos to HDF5) and `make-corpus` (the sim video corpus).

Each takes `--config FILE` and dotted overrides of its config below; a flag given on the command line wins over the
file (the flags are the config's keys with dashes)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from voltron.config import command_config, command_group, config_command


@dataclass
class CollectConfig:
    """`voltron sim collect`: scripted-expert demos of one task."""

    task: str = ""  # task name, e.g. drawer-open (an unknown name lists them all); required
    out: str = ""  # output .hdf5 path (or LeRobot dataset folder), e.g. demos/drawer-open.hdf5; required
    episodes: int = 25  # successful episodes to write
    overwrite: bool = False  # replace `out` if it exists (once the new file is complete)
    action_noise: float = 0.0  # Gaussian action noise std, executed and recorded
    dart_noise: float = 0.0  # Gaussian noise std executed but not recorded (DART: demos label the clean action)
    seed: int = 0  # attempt k resets with seed + k
    camera: str | None = None  # camera name (None: the task's)
    image_size: int = 224  # square image size in pixels
    multisamples: int = 0  # anti-aliasing samples (0 is fastest)
    horizon: int | None = None  # max steps per episode (None: the task's, 500)
    max_attempts: int | None = None  # give up after this many attempts (None: 4 x episodes)
    post_success_steps: int = 10  # steps kept after the first success
    valid_fraction: float = 0.1  # share of demos in mask/valid
    compression: str = "gzip"  # image compression: gzip or lzf
    format: str = "hdf5"  # hdf5 (one file) or lerobot (a v3.0 dataset folder)
    progress: bool = True


@dataclass
class CorpusConfig:
    """`voltron sim make-corpus`: the sim video-language corpus in the Something-Something-v2 layout."""

    out: str = ""  # output directory; required
    tasks: str = "45"  # how many corpus tasks (1-45), or comma-separated task names
    clips_per_task: int = 10
    seed: int = 0  # corpus seed: placements, cameras, noise, captions
    progress: bool = True


def _as_namespace(config) -> argparse.Namespace:
    """The resolved config as the namespace the handlers read (they take `no_progress`)."""
    return argparse.Namespace(**dataclasses.asdict(config), no_progress=not config.progress)


def _collect(args: argparse.Namespace) -> int:
    from voltron.sim.collect import main

    return main(_as_namespace(command_config(CollectConfig, args, "voltron sim collect", ("task", "out"))))


def _make_corpus(args: argparse.Namespace) -> int:
    from voltron.sim.corpus import main

    return main(_as_namespace(command_config(CorpusConfig, args, "voltron sim make-corpus", ("out",))))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sim collect` and `sim make-corpus` (argparse only; the handlers import MuJoCo when they run)."""
    commands = command_group(subparsers, "sim", "MuJoCo simulation: expert demos and the sim-made video corpus")

    collect = config_command(
        commands, "collect", "voltron.sim.cli:CollectConfig",
        help="roll out a task's scripted expert (MetaWorld or Franka Kitchen) and write the successful episodes as demo HDF5",
        description="Roll out the task's scripted expert; only successful episodes are written "
        "(robomimic-style HDF5, written atomically), and the expert's success rate is reported.",
    )  # fmt: skip
    collect.add_argument("--task", help="task name, e.g. drawer-open (an unknown name lists them all)")
    collect.add_argument("--episodes", type=int, help="successful episodes to write (default 25)")
    collect.add_argument("--out", help="output .hdf5 path, e.g. demos/drawer-open.hdf5")
    collect.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (once the new file is complete)"
    )
    collect.add_argument(
        "--action-noise", type=float, help="Gaussian action noise std, executed and recorded (default 0)"
    )
    collect.add_argument(
        "--dart-noise",
        type=float,
        metavar="SIGMA",
        help="DART: Gaussian noise std added to the executed action only; the demo records the expert's clean "
        "action (default 0)",
    )
    collect.add_argument("--seed", type=int, help="attempt k resets with seed+k (default 0)")
    collect.add_argument("--camera", help="camera name (default: the task's, corner)")
    collect.add_argument("--image-size", type=int, help="square image size in pixels (default 224)")
    collect.add_argument("--multisamples", type=int, help="anti-aliasing samples (default 0, fastest)")
    collect.add_argument(
        "--horizon",
        type=int,
        help="max steps per episode (default: the task's, 500 for MetaWorld, 100 for the kitchen)",
    )
    collect.add_argument("--max-attempts", type=int, help="give up after this many (default 4x)")
    collect.add_argument("--post-success-steps", type=int, help="steps kept after first success")
    collect.add_argument("--valid-fraction", type=float, help="share of demos in mask/valid")
    collect.add_argument("--compression", choices=("gzip", "lzf"), help="image compression")
    collect.add_argument(
        "--format",
        choices=("hdf5", "lerobot"),
        help="hdf5 (one file) or lerobot (a v3.0 dataset folder)",
    )
    collect.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    collect.set_defaults(func=_collect)

    corpus = config_command(
        commands, "make-corpus", "voltron.sim.cli:CorpusConfig",
        help="render scripted-expert clips of the 45 non-evaluation tasks in the Something-Something-v2 layout",
        description="Render scripted-expert clips into DIR/videos/<id>.webm (VP9, 12 fps, 240 px high) with "
        "DIR/labels/{train,validation,labels}.json. Rerunning skips clips already written.",
    )  # fmt: skip
    corpus.add_argument("--out", help="output directory")
    corpus.add_argument("--tasks", help="how many corpus tasks (1-45, default 45), or comma-separated task names")
    corpus.add_argument("--clips-per-task", type=int, help="clips per task (default 10)")
    corpus.add_argument("--seed", type=int, help="corpus seed: placements, cameras, noise, captions")
    corpus.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    corpus.set_defaults(func=_make_corpus)
