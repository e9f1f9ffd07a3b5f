"""Atomic file writes shared by every writer in voltron (checkpoints, stores, corpora, configs), and SIGTERM handled
like Ctrl-C so a writer's clean-up runs; no torch import."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
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


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file (what `sha256sum` prints), read in 1 MiB blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def remove_stale_partials(path: str | os.PathLike) -> None:
    """Delete what killed writers of `path` left beside it: files or folders named `.<name>.<pid>-*.partial` whose
    process no longer exists (a live writer's are left alone)."""
    path = Path(path)
    for partial in path.parent.glob(f".{path.name}.*{PARTIAL_SUFFIX}"):
        pid_text = partial.name[len(path.name) + 2 :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            if partial.is_dir() and not partial.is_symlink():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)
        except PermissionError:  # alive, owned by someone else
            pass


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A hidden sibling folder (`.<name>.<pid>-*.partial`) to fill; when the block ends it is renamed to `target`,
    which must not exist or be empty, so readers see the whole folder or none. On an error or a kill it is removed
    (a killed run's is removed by the next, `remove_stale_partials`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=PARTIAL_SUFFIX, dir=target.parent))
    try:
        yield staging
        os.replace(staging, target)  # fails on a non-empty `target`: never merged into
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised like Ctrl-C's KeyboardInterrupt, so `finally`/`except BaseException` clean-ups run
    (a temporary file removed, the previous output left as it was) before the process exits."""

    exit_code = 128 + signal.SIGTERM


def terminate_like_interrupt() -> None:
    """Make SIGTERM raise `Terminated` in this (main) process. Child processes forked later inherit the handler, so
    in them it restores the default action and re-sends the signal: a worker still dies at once, as before."""
    main_pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, handler)
