"""Generic video+caption corpora: a JSONL or CSV manifest of `path, caption` rows, paths relative to the manifest.

This is how users bring their own clips (Ego4D cuts, robot recordings; webm or mp4). A JSONL manifest holds one
object per line; a CSV manifest has a header row. Columns: `path` and `caption` (required), `split` (optional:
"train" or "val"), `id` (optional: defaults to the path without its suffix). Without any `split` column, the
validation clips are `n_val` clips drawn with `seed` (listing order is kept in both splits).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val"}


@dataclass(frozen=True)
class ClipEntry:
    """One clip of a corpus listing; `path` is absolute, `caption` is what gets tokenised."""

    split: str  # "train" | "val"
    clip_id: str
    path: Path
    caption: str


class ManifestError(ValueError):
    """A manifest or label file that cannot be read; the message names the file and the position."""


def find_manifest(root: str | os.PathLike) -> Path:
    """`root` itself if it is a file, else the manifest.jsonl or manifest.csv inside it."""
    root = Path(root)
    if root.is_file():
        return root
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: no manifest; expected a .jsonl/.csv file or a folder holding {MANIFEST_NAMES}")


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """(position, row) pairs; position is 'line N' for JSONL and 'row N' (header = row 1) for CSV."""
    if path.suffix.lower() == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ManifestError(
                        f"{path}: invalid JSON at line {line_number}, column {err.colno}: {err.msg}"
                    ) from None
                if not isinstance(row, dict):
                    raise ManifestError(f"{path}: line {line_number} is {type(row).__name__}; expected an object")
                rows.append((f"line {line_number}", row))
        return rows
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            return [(f"row {reader.line_num}", dict(row)) for row in reader]
    raise ManifestError(f"{path}: unsupported manifest type {path.suffix!r}; expected .jsonl or .csv")


def list_clips(root: str | os.PathLike, *, n_val: int = 1000, seed: int = 0) -> list[ClipEntry]:
    """All clips of a manifest corpus, train then val, each in manifest order."""
    manifest = find_manifest(root)
    rows = _read_rows(manifest)
    entries: list[tuple[str | None, str, Path, str]] = []
    seen: dict[str, str] = {}
    for position, row in rows:
        for key in ("path", "caption"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ManifestError(f"{manifest}: {position} has no {key!r}; expected non-empty 'path' and 'caption'")
        split = row.get("split") or None
        if split is not None and split not in SPLIT_NAMES:
            raise ManifestError(f"{manifest}: {position} has split {split!r}; expected one of {sorted(SPLIT_NAMES)}")
        clip_id = str(row.get("id") or Path(row["path"]).with_suffix("").as_posix())
        if clip_id in seen:
            raise ManifestError(f"{manifest}: {position} repeats clip id {clip_id!r} first seen at {seen[clip_id]}")
        seen[clip_id] = position
        path = (manifest.parent / row["path"]).resolve()
        entries.append((SPLIT_NAMES.get(split), clip_id, path, row["caption"].strip()))
    if not entries:
        raise ManifestError(f"{manifest}: no clips listed")

    if all(split is None for split, *_ in entries):
        if not 0 <= n_val < len(entries):
            raise ManifestError(
                f"{manifest}: {len(entries)} clips cannot give {n_val} validation clips and a training split; "
                "pass a smaller --n-val or add a 'split' column"
            )
        # RandomState's stream is frozen by NumPy's compatibility policy: the same seed gives the same split forever.
        val = set(np.random.RandomState(seed).permutation(len(entries))[:n_val].tolist())
        splits = ["val" if i in val else "train" for i in range(len(entries))]
    else:
        splits = [split or "train" for split, *_ in entries]
    clips = [ClipEntry(s, clip_id, path, caption) for s, (_, clip_id, path, caption) in zip(splits, entries)]
    return [c for c in clips if c.split == "train"] + [c for c in clips if c.split == "val"]
