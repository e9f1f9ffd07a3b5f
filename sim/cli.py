"""The `voltron sim` commands: `collect` (scripted-expert demos to HDF5) and `make-corpus` (the sim video corpus)."""

from __future__ import annotations

import argparse


def _collect(args: argparse.Namespace) -> int:
    from voltron.sim.collect import main

    return main(args)


def _make_corpus(args: argparse.Namespace) -> int:
    from voltron.sim.corpus import main

    return main(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sim collect` and `sim make-corpus` (argparse only; the handlers import MuJoCo when they run)."""
    sim = subparsers.add_parser("sim", help="MuJoCo simulation: expert demos and the sim-made video corpus")
    sim.set_defaults(func=lambda _args: sim.print_help() or 2)
    commands = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")

    collect = commands.add_parser(
        "collect",
        help="roll out MetaWorld's scripted expert and write the successful episodes as demo HDF5",
        description="Roll out MetaWorld's scripted expert on one task; only successful episodes are written "
        "(robomimic-style HDF5, written atomically), and the expert's success rate is reported.",
    )
    collect.add_argument("--task", required=True, help="task name, e.g. drawer-open (an unknown name lists them all)")
    collect.add_argument("--episodes", type=int, default=25, help="successful episodes to write (default 25)")
    collect.add_argument("--out", required=True, help="output .hdf5 path, e.g. demos/drawer-open.hdf5")
    collect.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (once the new file is complete)"
    )
    collect.add_argument("--action-noise", type=float, default=0.0, help="Gaussian action noise std (default 0)")
    collect.add_argument("--seed", type=int, default=0, help="attempt k resets with seed+k (default 0)")
    collect.add_argument("--camera", default=None, help="camera name (default: the task's, corner)")
    collect.add_argument("--image-size", type=int, default=224, help="square image size in pixels (default 224)")
    collect.add_argument("--multisamples", type=int, default=0, help="anti-aliasing samples (default 0, fastest)")
    collect.add_argument("--horizon", type=int, default=None, help="max steps per episode (default 500)")
    collect.add_argument("--max-attempts", type=int, default=None, help="give up after this many (default 4x)")
    collect.add_argument("--post-success-steps", type=int, default=10, help="steps kept after first success")
    collect.add_argument("--valid-fraction", type=float, default=0.1, help="share of demos in mask/valid")
    collect.add_argument("--compression", choices=("gzip", "lzf"), default="gzip", help="image compression")
    collect.add_argument(
        "--format",
        choices=("hdf5", "lerobot"),
        default="hdf5",
        help="hdf5 (one file) or lerobot (a v3.0 dataset folder)",
    )
    collect.add_argument("--no-progress", action="store_true", help="no progress bar")
    collect.set_defaults(func=_collect)

    corpus = commands.add_parser(
        "make-corpus",
        help="render scripted-expert clips of the 45 non-evaluation tasks in the Something-Something-v2 layout",
        description="Render scripted-expert clips into DIR/videos/<id>.webm (VP9, 12 fps, 240 px high) with "
        "DIR/labels/{train,validation,labels}.json. Rerunning skips clips already written.",
    )
    corpus.add_argument("--out", required=True, help="output directory")
    corpus.add_argument(
        "--tasks", default="45", help="how many corpus tasks (1-45, default 45), or comma-separated task names"
    )
    corpus.add_argument("--clips-per-task", type=int, default=10, help="clips per task (default 10)")
    corpus.add_argument("--seed", type=int, default=0, help="corpus seed: placements, cameras, noise, captions")
    corpus.add_argument("--no-progress", action="store_true", help="no progress bar")
    corpus.set_defaults(func=_make_corpus)
