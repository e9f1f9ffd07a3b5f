"""Run metrics: a JSONL file (always), TensorBoard and Weights & Biases (optional), and MFU from a FLOP count."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from voltron.io import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"

# Dense bf16 tensor-core peak per device, FLOP/s, by a substring of torch.cuda.get_device_name().
# Longer names first, so "H100 PCIe" wins over "H100". Override with log.peak_tflops.
PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "V100": 125e12,
}


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """The device's peak FLOP/s for MFU, or None when unknown (CPU, unlisted GPUs without an override)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything `fn` runs (matmuls, convolutions, attention), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a torn last line (a killed writer) is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class Tracker:
    """Writes one record per logging step to every enabled sink. Only rank 0 makes one with `enabled=True`.

    On (re)start, records after `resume_step` are dropped from metrics.jsonl: a run killed after its last
    checkpoint logged steps that the resumed run will log again.
    """

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        resume_step: int = 0,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "voltron-pretraining",
        wandb_entity: str | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.enabled, self.path = enabled, Path(run_dir) / METRICS_FILE
        self._tensorboard = self._wandb = None
        self._file = None
        if not enabled:
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        atomic_write_bytes(self.path, b"".join((json.dumps(r) + "\n").encode() for r in kept))
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("log.tensorboard=true needs tensorboard: pip install 'voltron[track]'") from err
            self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as err:
                raise ImportError("log.wandb=true needs wandb: pip install 'voltron[track]'") from err
            self._wandb = wandb_module.init(
                project=wandb_project,
                entity=wandb_entity,
                dir=str(run_dir),
                config=config,
                id=Path(run_dir).resolve().name,
                resume="allow",
            )

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        step = int(record["step"])
        scalars = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(f"pretrain/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"pretrain/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
