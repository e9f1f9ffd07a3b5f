"""Atomic file writes shared by every writer in voltron (checkpoints, stores, corpora, configs); no torch import."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"  # `.<name>.partial`: what a killed writer leaves behind, safe to delete


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` under a temporary name in the same folder, fsync, then rename: readers and a later run never
    see a partial file under the final name, even if the writer is killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")
