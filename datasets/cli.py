"""`voltron preprocess`: the command line for turning a video corpus into the training store."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `preprocess` to the `voltron` command (argparse only: the handler imports the heavy modules)."""
    parser = subparsers.add_parser(
        "preprocess",
        help="validate a video corpus, tokenise its captions and write the compact training store",
        description=(
            "Validate every clip (decodes, frame count, fps, size), tokenise each caption once and write sharded "
            "JPEG frames at the training size plus an index. Parallel over cores, resumable after a kill, "
            "deterministic for a seed; bad clips are skipped and listed in OUT/report.json. A re-run of a "
            "finished store does nothing."
        ),
    )
    parser.add_argument("--corpus", required=True, help="corpus layout: sth-sth-v2 or manifest (JSONL/CSV)")
    parser.add_argument("--root", required=True, help="the raw corpus: Sth-Sth-v2 folder, or manifest file/folder")
    parser.add_argument("--out", required=True, help="the store folder to write (or resume)")
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
    parser.set_defaults(func=run_preprocess)


def run_preprocess(args: argparse.Namespace) -> int:
    from voltron.datasets.corpus import ManifestError
    from voltron.datasets.preprocess import PreprocessError, config_from_args, preprocess

    try:
        result = preprocess(config_from_args(args))
    except (ManifestError, PreprocessError, OSError) as err:  # OSError: unreadable files, unknown tokenizer
        print(f"voltron preprocess: error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0
