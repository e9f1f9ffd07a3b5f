"""Behaviour cloning on demonstrations: with a frozen encoder every frame is encoded once and cached, then the
extractor and head train on the cache in seconds; with fine-tuning each batch goes through the encoder."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from voltron.datasets.windows import NormStats, WindowDataset
from voltron.policy.config import BCConfig
from voltron.policy.model import BCPolicy, build_encoder


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def encode_frames(
    policy: BCPolicy, windows: WindowDataset, batch_size: int, dtype: torch.dtype, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder tokens for every frame of every episode: (F, N, D) in `dtype` on the CPU, and key masks (F, N)."""
    policy.eval()
    tokens, masks = [], []
    bar = tqdm(total=int(windows.offsets[-1]), desc="encoding demo frames", unit="frame", disable=not progress)
    for episode in range(len(windows.episodes)):
        frames, language = windows.frames(episode), windows.language(episode)
        for start in range(0, len(frames), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size]))
            chunk_tokens, chunk_mask = policy.encode_tokens(chunk, [language] * len(chunk))
            tokens.append(chunk_tokens.to("cpu", dtype))
            masks.append(chunk_mask.cpu())
            bar.update(len(chunk))
    bar.close()
    return torch.cat(tokens), torch.cat(masks)


def make_batch(
    windows: WindowDataset, index: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
) -> dict[str, Any]:
    frame_ids = torch.as_tensor(windows.frame_ids[index.numpy()])  # (B, H)
    batch: dict[str, Any] = {
        "proprio": torch.as_tensor(windows.proprio[frame_ids.numpy()]),  # (B, H, P)
        "action": torch.as_tensor(windows.actions[index.numpy()]),  # (B, A)
    }
    if cache is not None:
        batch["tokens"], batch["token_mask"] = cache[0][frame_ids], cache[1][frame_ids]
    else:
        episodes = windows.episode_of[index.numpy()]
        steps = frame_ids.numpy() - windows.offsets[episodes][:, None]
        batch["frames"] = torch.from_numpy(
            np.stack([windows.frames(e)[s] for e, s in zip(episodes, steps)])  # (B, H, h, w, 3)
        )
        batch["language"] = [windows.language(e) for e in episodes]
    return batch


@torch.no_grad()
def validation_loss(
    policy: BCPolicy, windows: WindowDataset, cache: tuple[torch.Tensor, torch.Tensor] | None, batch_size: int
) -> float:
    policy.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        index = torch.arange(start, min(start + batch_size, len(windows)))
        loss, _ = policy(make_batch(windows, index, cache))
        total, count = total + float(loss) * len(index), count + len(index)
    policy.train()
    return total / max(count, 1)


def load_split(demos: Any, split: str, required: bool) -> list:
    from voltron.datasets.episodes import load_episodes

    try:
        return load_episodes(demos, split=split)
    except KeyError as err:  # a file without that mask/<split>
        if required:
            raise
        warnings.warn(f"{demos}: no {split!r} split ({err}); training without validation", stacklevel=2)
        return []


def train_policy(
    config: BCConfig, demos: str | Path | Sequence[str | Path], out_dir: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Train a policy on `demos` (anything `voltron.datasets.episodes.load_episodes` reads) and save it to
    `out_dir` (config.json, model.safetensors, metrics.jsonl). Returns the run summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy_cfg, train_cfg = config.policy, config.train
    torch.manual_seed(policy_cfg.seed)
    device = resolve_device(train_cfg.device)
    encoder_path = Path(policy_cfg.encoder).expanduser()
    if encoder_path.is_dir():  # a run directory: record where it is, whatever the working directory later
        policy_cfg.encoder = str(encoder_path.resolve())

    train_windows = WindowDataset(load_split(demos, train_cfg.train_split, True), policy_cfg.history, policy_cfg.camera)
    policy_cfg.camera = train_windows.camera
    valid_episodes = load_split(demos, train_cfg.valid_split, False)
    valid_windows = WindowDataset(valid_episodes, policy_cfg.history, policy_cfg.camera) if valid_episodes else None

    encoder = build_encoder(policy_cfg)
    policy = BCPolicy(
        config,
        encoder,
        train_windows.proprio_dim,
        train_windows.action_dim,
        NormStats.compute(train_windows.proprio),
        NormStats.compute(train_windows.actions),
        image_size=int(train_windows.frames(0).shape[1]),
    ).to(device)

    start = time.perf_counter()
    train_cache = valid_cache = None
    if policy_cfg.freeze_encoder:
        dtype = getattr(torch, train_cfg.cache_dtype)  # validated against config.CACHE_DTYPES
        train_cache = encode_frames(policy, train_windows, train_cfg.encode_batch_size, dtype, progress)
        if valid_windows is not None:
            valid_cache = encode_frames(policy, valid_windows, train_cfg.encode_batch_size, dtype, progress)
    encode_s = time.perf_counter() - start

    groups = [{"params": [*policy.extractor.parameters(), *policy.head.parameters()], "lr": train_cfg.lr}]
    if not policy_cfg.freeze_encoder:
        groups.append(
            {"params": [p for p in policy.encoder.parameters() if p.requires_grad], "lr": train_cfg.encoder_lr}
        )
    optimizer = torch.optim.AdamW(groups, weight_decay=train_cfg.weight_decay)
    generator = torch.Generator().manual_seed(policy_cfg.seed)

    policy.train()
    history: list[dict[str, Any]] = []
    valid = None
    metrics_path = out_dir / "metrics.jsonl"
    with open(metrics_path, "w") as log:
        bar = tqdm(range(1, train_cfg.steps + 1), desc="training policy", unit="step", disable=not progress)
        for step in bar:
            index = torch.randint(
                len(train_windows), (min(train_cfg.batch_size, len(train_windows)),), generator=generator
            )
            loss, info = policy(make_batch(train_windows, index, train_cache))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"policy loss became {float(loss)} at step {step}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record = {"step": step, "loss": float(loss), **{k: float(v) for k, v in info.items()}}
            if valid_windows is not None and (step % train_cfg.valid_every == 0 or step == train_cfg.steps):
                valid = validation_loss(policy, valid_windows, valid_cache, train_cfg.batch_size)
                record["valid_loss"] = valid
            if step % train_cfg.log_every == 0 or step == train_cfg.steps or "valid_loss" in record:
                log.write(json.dumps(record) + "\n")
                log.flush()
                history.append(record)
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}", **({"valid": f"{valid:.4f}"} if valid is not None else {})
                )
    summary = {
        "demos": [str(d) for d in demos] if isinstance(demos, list | tuple) else str(demos),
        "train_episodes": len(train_windows.episodes),
        "valid_episodes": len(valid_episodes),
        "train_samples": len(train_windows),
        "encode_seconds": round(encode_s, 2),
        "train_seconds": round(time.perf_counter() - start - encode_s, 2),
        "final_loss": history[-1]["loss"] if history else None,
        "final_valid_loss": valid,
    }
    policy.save_pretrained(out_dir, extra={"training": summary})
    return summary
