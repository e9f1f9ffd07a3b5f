"""The Something-Something-v2 layout: `labels/train.json`, `labels/validation.json` and `videos/<id>.webm`.

Each label file is a JSON list of objects with at least `id` and `label` (the template with its placeholders
filled in, e.g. "putting wood onto cable"). As upstream Voltron: captions are the `label`, lower-cased;
validation is the first `n_val` entries of validation.json (default 1000); the test split is unused.
The sim-made corpus and the tests' generated corpora use exactly this layout, so this reader accepts nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from voltron.datasets.corpus import ClipEntry, ManifestError

LABEL_FILES = {"train": Path("labels/train.json"), "val": Path("labels/validation.json")}
VIDEO_DIR, VIDEO_SUFFIX = Path("videos"), ".webm"
DEFAULT_N_VAL = 1000


class LabelFileError(ManifestError):
    """A label file that does not parse or lacks fields; the message names the file and the position."""


def read_labels(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of one label file, checked: a list of objects with string `id` and `label`."""
    path = Path(path)
    if not path.is_file():
        expected = ", ".join(str(p) for p in LABEL_FILES.values())
        raise FileNotFoundError(f"{path}: label file not found (Something-Something-v2 layout expects {expected})")
    text = path.read_text(encoding="utf-8")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise LabelFileError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(entries, list):
        kind = type(entries).__name__
        raise LabelFileError(f"{path}: top level is a {kind}; expected a list of objects with 'id' and 'label'")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise LabelFileError(f"{path}: entry {position} is a {type(entry).__name__}; expected an object")
        for key in ("id", "label"):
            value = entry.get(key)
            if isinstance(value, int) and key == "id":
                entry[key] = str(value)
            elif not isinstance(value, str) or not value.strip():
                raise LabelFileError(f"{path}: entry {position} (id {entry.get('id')!r}) has no string {key!r}")
    return entries


def list_clips(root: str | os.PathLike, *, n_val: int = DEFAULT_N_VAL, seed: int = 0) -> list[ClipEntry]:
    """Train clips (all of train.json), then the first `n_val` validation clips, each in label-file order.

    `seed` is accepted for a uniform corpus interface and unused: the split is fixed by the label files.
    A clip listed here may still be missing or broken on disk; preprocessing reports those.
    """
    root = Path(root)
    if n_val < 0:
        raise ValueError(f"n_val={n_val}; expected a non-negative number of validation clips")
    clips: list[ClipEntry] = []
    first_seen: dict[str, str] = {}
    for split, relative in LABEL_FILES.items():
        entries = read_labels(root / relative)
        if split == "val":
            entries = entries[:n_val]
        for position, entry in enumerate(entries):
            clip_id = entry["id"].strip()
            where = f"{relative} entry {position}"
            if clip_id in first_seen:
                first = first_seen[clip_id]
                raise LabelFileError(f"{root / relative}: entry {position} repeats id {clip_id!r} (first at {first})")
            first_seen[clip_id] = where
            path = root / VIDEO_DIR / f"{clip_id}{VIDEO_SUFFIX}"
            clips.append(ClipEntry(split, clip_id, path, entry["label"].strip().lower()))
    return clips
