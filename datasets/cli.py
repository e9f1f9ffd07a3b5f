"""`voltron preprocess` (a video corpus into the training store) and `voltron demos convert` (demos between formats)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from voltron.config import add_config_option, command_config, command_group, config_command


@dataclasses.dataclass
class ConvertConfig:
    """`voltron demos convert`: one demo source rewritten as a LeRobot v3.0 dataset or a native HDF5 file."""

    source: str = ""  # demo file, DROID episode folder, LeRobot dataset, or a directory of them; required
    out: str = ""  # output: a LeRobot dataset folder, or an .hdf5 file; required
    to: str = ""  # output format: lerobot or hdf5; required
    fps: float | None = None  # frame rate (None: the source's: LeRobot info, DROID 15, env_args)
    vcodec: str = "libsvtav1"  # LeRobot video codec: libsvtav1, h264 or hevc
    crf: int = 30  # LeRobot video quality, lower is better
    pix_fmt: str = "yuv420p"  # yuv420p, or yuv444p (h264 only): full colour
    cameras: list[str] | None = None  # cameras to keep (None: all)
    image_size: int | None = None  # resize frames to a square of this size (None: as stored)
    overwrite: bool = False  # replace `out` once the new output is complete
    progress: bool = True


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `preprocess` to the `voltron` command (argparse only: the handler imports the heavy modules)."""
    parser = subparsers.add_parser(
        "preprocess",
        help="validate a video corpus, tokenise its captions and write the compact training store",
        description=(
            "Validate every clip (decodes, frame count, fps, size), tokenise each caption once and write sharded "
            "JPEG frames at the training size plus an index. Parallel over cores, resumable after a kill, "
            "deterministic for a seed; bad clips are skipped and listed in OUT/report.json. A re-run of a "
            "finished store does nothing. Every flag is also a key of the preprocess config (--config FILE, dotted "
            "overrides); a flag given here wins over the file."
        ),
        add_help=False,
    )
    parser.add_argument("--corpus", help="corpus layout: sth-sth-v2 or manifest (JSONL/CSV); required")
    parser.add_argument("--root", help="the raw corpus: Sth-Sth-v2 folder, or manifest file/folder; required")
    parser.add_argument("--out", help="the store folder to write (or resume); required")
    parser.add_argument("--tokenizer", help="language model name, local path or alias (default: minilm)")
    parser.add_argument("--max-lang-len", dest="max_lang_len", type=int, help="tokens per caption (default: 20)")
    parser.add_argument("--size", type=int, help="square training frame size in pixels (default: 224)")
    parser.add_argument("--workers", type=int, help="decoding processes (default: every available core)")
    parser.add_argument("--seed", type=int, help="seed for a manifest's train/val draw (default: 0)")
    parser.add_argument("--n-val", dest="n_val", type=int, help="validation clips (default: 1000, as upstream)")
    parser.add_argument("--jpeg-quality", dest="jpeg_quality", type=int, help="JPEG quality 1-100 (default: 90)")
    parser.add_argument("--clips-per-shard", dest="clips_per_shard", type=int, help="clips per shard (default: 2000)")
    parser.add_argument("--min-frames", dest="min_frames", type=int, help="shortest usable clip (default: 5)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    add_config_option(parser, "voltron.datasets.preprocess:PreprocessConfig")
    parser.set_defaults(func=run_preprocess)

    commands = command_group(subparsers, "demos", "household demonstrations: convert between formats")
    convert = config_command(
        commands,
        "convert",
        "voltron.datasets.cli:ConvertConfig",
        help="convert demos (HDF5, DROID folders, LeRobot datasets, or a directory of them) to LeRobot v3 or HDF5",
        description="Read every episode of SOURCE one at a time and write OUT as a LeRobot v3.0 dataset (train/valid "
        "splits kept, LeRobot's stats with quantiles, written atomically per file; a killed conversion resumes when "
        "rerun) or as one native demo HDF5 file. OUT is never replaced without --overwrite.",
    )
    convert.add_argument(
        "source", nargs="?", help="demo file, DROID episode folder, LeRobot dataset, or a directory of them"
    )
    convert.add_argument("out", nargs="?", help="output: a LeRobot dataset folder, or an .hdf5 file")
    convert.add_argument("--to", choices=("lerobot", "hdf5"), help="output format (required)")
    convert.add_argument(
        "--fps", type=float, help="frame rate (default: the source's: LeRobot info, DROID 15, env_args)"
    )
    convert.add_argument(
        "--vcodec", choices=("libsvtav1", "h264", "hevc"), help="LeRobot video codec (default libsvtav1)"
    )
    convert.add_argument("--crf", type=int, help="LeRobot video quality, lower is better (default 30)")
    convert.add_argument(
        "--pix-fmt", choices=("yuv420p", "yuv444p"), help="yuv444p (h264 only): full colour (default yuv420p)"
    )
    convert.add_argument("--cameras", nargs="+", help="cameras to keep (default: all)")
    convert.add_argument("--image-size", type=int, help="resize frames to a square of this size (default: as stored)")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT once the new output is complete")
    convert.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    convert.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from voltron.datasets.lerobot import convert_main

    config = command_config(ConvertConfig, args, "voltron demos convert", ("source", "out", "to"))
    return convert_main(argparse.Namespace(**dataclasses.asdict(config), no_progress=not config.progress))


def run_preprocess(args: argparse.Namespace) -> int:
    from voltron.datasets.corpus import ManifestError
    from voltron.datasets.preprocess import PreprocessConfig, PreprocessError, preprocess

    config = command_config(PreprocessConfig, args, "voltron preprocess")
    try:
        result = preprocess(config)
    except (ManifestError, PreprocessError, OSError) as err:  # OSError: unreadable files, unknown tokenizer
        print(f"voltron preprocess: error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0
