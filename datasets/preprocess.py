"""`voltron preprocess`: validate every clip of a corpus, tokenise each caption once, and write the training store.

The job is planned as a fixed list of shards (clips `[k * clips_per_shard, (k + 1) * clips_per_shard)` of each
split, in listing order), so its output depends only on the corpus and the settings, never on the number of
workers or on where a previous run was killed. Each shard's JSONL journal records every clip as it is
committed; a re-run after a kill resumes from the journals, and a re-run of a finished store does nothing.
Clips are decoded sequentially with PyAV (no seeking, so no decord seek bugs) in a pool of processes.
See `voltron.datasets.store` for the format and why it was chosen.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voltron.datasets import corpus, sthsth
from voltron.datasets.corpus import ClipEntry
from voltron.datasets.sampling import MIN_CLIP_FRAMES
from voltron.datasets.store import (
    INDEX_FILE,
    PLAN_FILE,
    REPORT_FILE,
    SPLITS,
    STORE_FILE,
    STORE_FORMAT,
    STORE_VERSION,
    ShardWriter,
    build_index,
    center_square_resize,
    encode_jpeg,
    read_journal,
    shard_name,
    write_index,
)
from voltron.datasets.video import VideoError, iter_frames, probe_video
from voltron.io import atomic_write_json

# Corpus layout name -> lister(root, *, n_val, seed) -> [ClipEntry], train clips first. New layouts register here.
CORPUS_READERS: dict[str, Callable[..., list[ClipEntry]]] = {
    "sth-sth-v2": sthsth.list_clips,
    "manifest": corpus.list_clips,
}

# A test hook: seconds to sleep after committing each clip, so a test can SIGKILL a run part-way reliably.
DELAY_ENV = "VOLTRON_PREPROCESS_TEST_DELAY_S"

# A clip that decodes to fewer frames than its container's duration promises, by more than this margin
# (max of 2 frames and this fraction), was cut short: a truncated download decodes its first frames silently.
TRUNCATION_MARGIN = 0.1


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of one preprocessing job; everything but `workers` and `progress` shapes the store's bytes."""

    corpus: str
    root: Path
    out: Path
    tokenizer: str = "minilm"  # voltron.models.language.DEFAULT_LANGUAGE_MODEL (not imported: workers skip torch)
    max_lang_len: int = 20
    size: int = 224
    workers: int = 0  # 0: every core this process may use
    seed: int = 0
    n_val: int = 1000
    jpeg_quality: int = 90
    clips_per_shard: int = 2000
    min_frames: int = MIN_CLIP_FRAMES
    progress: bool = True

    def settings(self) -> dict[str, Any]:
        keys = ("tokenizer", "max_lang_len", "size", "seed", "n_val", "jpeg_quality", "clips_per_shard", "min_frames")
        return {key: getattr(self, key) for key in keys}


@dataclass
class PreprocessResult:
    """What a run did; `summary()` is the one line the CLI prints."""

    out: Path
    noop: bool
    listed: int
    kept: dict[str, int]
    bad: int
    processed: int  # clips handled by this run (the rest were already committed by an earlier run)
    seconds: float
    store_bytes: int
    workers: int
    bad_reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        kept = ", ".join(f"{split} {n}" for split, n in self.kept.items())
        report = self.out / REPORT_FILE
        if self.noop:
            return (
                f"preprocess: {self.out} is already complete: {sum(self.kept.values())} clips ({kept}), "
                f"{self.bad} bad (listed in {report}); nothing to do"
            )
        rate = self.processed / self.seconds if self.seconds else 0.0
        return (
            f"preprocess: {self.listed} clips listed, {sum(self.kept.values())} in the store ({kept}), "
            f"{self.bad} bad skipped (listed in {report}); {self.processed} processed now, "
            f"{self.listed - self.processed} resumed, in {self.seconds:.1f} s ({rate:.1f} clips/s, {self.workers} "
            f"worker{'s' if self.workers != 1 else ''}); store {self.store_bytes / 2**20:.1f} MiB"
        )


class PreprocessError(RuntimeError):
    """A job that cannot run as asked (bad settings, a busy output folder); the message says what to change."""


class StoreMismatchError(PreprocessError):
    """The output folder holds a store (or a started one) made from another corpus or other settings."""


# --- The per-clip work, run in pool processes --------------------------------------------------------------------


def encode_clip(path: str, size: int, jpeg_quality: int, min_frames: int) -> tuple[dict[str, Any], list[bytes]]:
    """Validate and convert one clip: ({"status": "ok", metadata} , JPEG frames) or ({"status": "bad", reason}, []).

    Never raises for a bad clip: missing, empty, corrupt, undecodable, truncated and too-short clips all come
    back as "bad" with a reason for the report.
    """
    try:
        info = probe_video(path)
        frames = [encode_jpeg(center_square_resize(f.to_image(), size), jpeg_quality) for f in iter_frames(path)]
    except VideoError as err:
        return {"status": "bad", "reason": err.reason}, []
    except Exception as err:  # a bad clip must never stop the job; the reason keeps what went wrong
        return {"status": "bad", "reason": f"unexpected {type(err).__name__}: {err}"}, []
    expected = info.expected_frames
    if expected is not None and len(frames) < expected - max(2, TRUNCATION_MARGIN * expected):
        reason = (
            f"truncated: decodes to {len(frames)} frames, the container declares {info.duration_s:.2f} s "
            f"at {info.fps:g} fps ({expected} frames)"
        )
        return {"status": "bad", "reason": reason}, []
    if len(frames) < min_frames:
        return {"status": "bad", "reason": f"too short: {len(frames)} frames, sampling needs {min_frames}"}, []
    metadata = {"n_frames": len(frames), "fps": info.fps, "width": info.width, "height": info.height}
    return {"status": "ok", "codec": info.codec, **metadata}, frames


def _encode_task(task: tuple[str, int, int, int]) -> tuple[dict[str, Any], list[bytes]]:
    return encode_clip(*task)


def _pool_initializer() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one decode per process: parallelism is across clips


def _ordered_results(tasks: list[tuple], workers: int) -> Iterator[tuple[dict[str, Any], list[bytes]]]:
    """Results in task order. At most a few tasks per worker are in flight, which bounds the memory held by
    results waiting behind a slow clip (unlike Pool.imap, which queues every task up front)."""
    if workers <= 1:
        yield from map(_encode_task, tasks)
        return
    # spawn, not fork: PyAV/FFmpeg state is not fork-safe, and the parent may hold tokenizer threads.
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_pool_initializer) as pool:
        in_flight: collections.deque = collections.deque()
        pending = iter(tasks)
        for task in pending:
            in_flight.append(pool.apply_async(_encode_task, (task,)))
            if len(in_flight) >= 4 * workers:
                break
        while in_flight:
            result = in_flight.popleft().get()
            task = next(pending, None)
            if task is not None:
                in_flight.append(pool.apply_async(_encode_task, (task,)))
            yield result


# --- Planning ----------------------------------------------------------------------------------------------------


def make_plan(config: PreprocessConfig, clips: list[ClipEntry]) -> dict[str, Any]:
    """The store's identity: format, corpus layout, settings and a hash of the listing (paths relative to root)."""
    root = Path(config.root)
    rows = [[c.split, c.clip_id, _relative(c.path, root), c.caption] for c in clips]
    digest = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()
    counts = {split: sum(c.split == split for c in clips) for split in SPLITS}
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "corpus": config.corpus,
        "settings": config.settings(),
        "listing": {"clips": counts, "sha256": digest},
    }


def _check_plan(out: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The finished store.json when the store is complete and matches `plan`; raise when `out` holds another job."""
    for name in (STORE_FILE, PLAN_FILE):
        path = out / name
        if not path.exists():
            continue
        found = json.loads(path.read_text())
        found_plan = {key: found.get(key) for key in plan}
        if found_plan != plan:
            differs = sorted(key for key in plan if found_plan[key] != plan[key])
            raise StoreMismatchError(
                f"{path}: {out} was started from another corpus or other settings (differs in {differs}: "
                f"{ {k: found_plan[k] for k in differs} } vs { {k: plan[k] for k in differs} }); "
                "use a new --out folder or delete this one"
            )
        if name == STORE_FILE:
            return found
    return None


def _shards(clips: list[ClipEntry], clips_per_shard: int) -> dict[str, list[list[ClipEntry]]]:
    by_split = {split: [c for c in clips if c.split == split] for split in SPLITS}
    return {
        split: [items[i : i + clips_per_shard] for i in range(0, len(items), clips_per_shard)]
        for split, items in by_split.items()
    }


def _relative(path: Path, root: Path) -> str:
    return os.path.relpath(path, root if root.is_dir() else root.parent)


# --- The job -----------------------------------------------------------------------------------------------------


def preprocess(config: PreprocessConfig) -> PreprocessResult:
    """Run (or resume, or confirm) the preprocessing job described by `config`."""
    start = time.perf_counter()
    if config.corpus not in CORPUS_READERS:
        raise PreprocessError(f"unknown corpus layout {config.corpus!r}; available: {sorted(CORPUS_READERS)}")
    if not 1 <= config.jpeg_quality <= 100 or config.size < 8 or config.clips_per_shard < 1:
        raise PreprocessError(
            f"jpeg_quality={config.jpeg_quality} (1-100), size={config.size} (>= 8), "
            f"clips_per_shard={config.clips_per_shard} (>= 1): out of range"
        )
    if config.min_frames < MIN_CLIP_FRAMES:
        raise PreprocessError(f"min_frames={config.min_frames}; the samplers need at least {MIN_CLIP_FRAMES} frames")
    out, root = Path(config.out), Path(config.root)
    workers = config.workers or len(os.sched_getaffinity(0))
    clips = CORPUS_READERS[config.corpus](root, n_val=config.n_val, seed=config.seed)
    plan = make_plan(config, clips)

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreprocessError(f"{out}: another `voltron preprocess` is writing this store") from None
        finished = _check_plan(out, plan)
        if finished is not None:
            return _result(out, finished["contents"], len(clips), 0, start, workers, noop=True)
        from voltron.models.language import load_tokenizer

        load_tokenizer(config.tokenizer)  # an unusable tokenizer fails now, not after hours of decoding
        if not (out / PLAN_FILE).exists():
            atomic_write_json(out / PLAN_FILE, plan)
        for stale in out.rglob(".*.partial"):  # temporary files of a killed atomic write
            stale.unlink()

        shards = _shards(clips, config.clips_per_shard)
        pending = []  # (split, shard, position, clip) not yet committed, in store order
        for split, split_shards in shards.items():
            for shard, members in enumerate(split_shards):
                done = read_journal(out / split / f"{shard_name(shard)}.jsonl")
                for position, record in enumerate(done):
                    if position >= len(members) or record.get("clip_id") != members[position].clip_id:
                        raise StoreMismatchError(
                            f"{out / split / shard_name(shard)}.jsonl: record {position} is "
                            f"{record.get('clip_id')!r}, the plan expects another clip; delete {out} and start over"
                        )
                pending += [(split, shard, p, members[p]) for p in range(len(done), len(members))]

        _run(config, out, root, shards, pending, workers)
        contents = _finish(config, out, root, shards)
        atomic_write_json(out / STORE_FILE, {**plan, "contents": contents})
    return _result(out, contents, len(clips), len(pending), start, workers, noop=False)


def _result(out: Path, contents: dict, listed: int, processed: int, start: float, workers: int, noop: bool):
    return PreprocessResult(
        out=out,
        noop=noop,
        listed=listed,
        kept={split: contents[split]["clips"] for split in SPLITS},
        bad=contents["bad"],
        processed=processed,
        seconds=time.perf_counter() - start,
        store_bytes=contents["bytes"],
        workers=workers,
        bad_reasons=contents["bad_reasons"],
    )


def _run(config: PreprocessConfig, out: Path, root: Path, shards, pending, workers: int) -> None:
    from tqdm import tqdm

    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    total = sum(len(members) for split_shards in shards.values() for members in split_shards)
    tasks = [(str(clip.path), config.size, config.jpeg_quality, config.min_frames) for *_, clip in pending]
    writer, writer_key = None, None
    with tqdm(
        total=total, initial=total - len(pending), unit="clip", desc="preprocess", disable=not config.progress
    ) as bar:
        for (split, shard, position, clip), (result, frames) in zip(pending, _ordered_results(tasks, workers)):
            if writer_key != (split, shard):
                if writer is not None:
                    writer.close()
                writer, writer_key = ShardWriter(out / split, shard), (split, shard)
            if len(writer.records) != position:  # the plan and the journal must agree on where this clip goes
                raise StoreMismatchError(
                    f"{writer.journal_path}: holds {len(writer.records)} clips, expected {position}"
                )
            record = {"clip_id": clip.clip_id, "caption": clip.caption, "path": _relative(clip.path, root), **result}
            writer.append(record, frames)
            bar.update()
            if delay:
                time.sleep(delay)
    if writer is not None:
        writer.close()


def _finish(config: PreprocessConfig, out: Path, root: Path, shards) -> dict[str, Any]:
    """Build each split's index (tokenising every distinct caption once), the bad-clip report, and the counts."""
    from voltron.models.language import tokenize

    contents: dict[str, Any] = {}
    bad: list[dict[str, str]] = []
    total_bytes = 0
    for split, split_shards in shards.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        kept = []
        for shard in range(len(split_shards)):
            for record in read_journal(out / split / f"{shard_name(shard)}.jsonl"):
                if record["status"] == "ok":
                    kept.append((shard, record))
                else:
                    bad.append({"split": split, **{k: record[k] for k in ("clip_id", "path", "reason")}})
            total_bytes += (out / split / f"{shard_name(shard)}.bin").stat().st_size
        captions = sorted({record["caption"] for _, record in kept})
        if captions:
            ids, mask = tokenize(captions, name=config.tokenizer, max_length=config.max_lang_len)
            row = {caption: i for i, caption in enumerate(captions)}
            rows = [row[record["caption"]] for _, record in kept]
            input_ids, attention_mask = ids.numpy()[rows], mask.numpy()[rows]
        else:
            import numpy as np

            input_ids = attention_mask = np.zeros((0, config.max_lang_len), dtype=np.int64)
        write_index(out / split / INDEX_FILE, build_index(kept, input_ids, attention_mask))
        total_bytes += (out / split / INDEX_FILE).stat().st_size
        contents[split] = {
            "clips": len(kept),
            "frames": sum(record["n_frames"] for _, record in kept),
            "shards": len(split_shards),
            "captions": len(captions),
        }
    reasons = collections.Counter(_reason_kind(entry["reason"]) for entry in bad)
    atomic_write_json(out / REPORT_FILE, {"bad_clips": bad, "bad_reasons": dict(sorted(reasons.items()))})
    contents.update(bad=len(bad), bad_reasons=dict(sorted(reasons.items())), bytes=total_bytes)
    return contents


def _reason_kind(reason: str) -> str:
    """The reason's leading phrase ('truncated', 'empty file (0 bytes)', ...), for counting."""
    return reason.split(":")[0]
