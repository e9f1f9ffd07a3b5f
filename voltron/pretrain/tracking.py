"""Run metrics: a JSONL file (always), TensorBoard and Weights & Biases (optional), and MFU from a FLOP count."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from voltron.errors import MissingDependency
from voltron.io import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"

# Dense (no sparsity) peak FLOP/s per device, by a substring of torch.cuda.get_device_name() and the training
# precision: "bf16" is the bf16 tensor-core peak (bf16 autocast); "fp32" is what fp32 training can reach, the TF32
# tensor-core peak, because the trainer allows TF32 matmuls (set_float32_matmul_precision("high")), or the plain
# FP32 peak on GPUs without TF32. None: the device has no such unit (V100 has no bf16). Longer names first, so
# "H100 PCIe" wins over "H100". Override with log.peak_tflops.
PEAK_FLOPS: dict[str, dict[str, float | None]] = {
    "H100 PCIe": {"bf16": 756e12, "fp32": 378e12},
    "H100 NVL": {"bf16": 835e12, "fp32": 418e12},
    "GH200": {"bf16": 989e12, "fp32": 495e12},
    "H100": {"bf16": 989e12, "fp32": 495e12},
    "H200": {"bf16": 989e12, "fp32": 495e12},
    "B200": {"bf16": 2250e12, "fp32": 1100e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp32": 183e12},
    "A10G": {"bf16": 70e12, "fp32": 35e12},
    "L4": {"bf16": 121e12, "fp32": 60e12},
    "RTX 4090": {"bf16": 165e12, "fp32": 83e12},
    "V100": {"bf16": None, "fp32": 15.7e12},  # Volta: fp16 tensor cores only; no bf16, no TF32
}


def device_peak_flops(device_name: str, precision: str) -> float | None:
    """The peak FLOP/s of a GPU (by its CUDA name) at a training precision ("bf16" or "fp32"), or None if unknown."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision {precision!r}; expected bf16 or fp32 (resolve 'auto' first)")
    for key, peaks in PEAK_FLOPS.items():
        if key in device_name:
            return peaks[precision]
    return None


def peak_flops(device: torch.device, override_tflops: float | None = None, precision: str = "bf16") -> float | None:
    """The device's peak FLOP/s at `precision` for MFU, or None when unknown (CPU, unlisted GPUs, V100 at bf16)
    unless `override_tflops` states it."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    return device_peak_flops(torch.cuda.get_device_name(device), precision)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything `fn` runs (matmuls, convolutions, attention), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def training_flops(
    model: torch.nn.Module, batch: dict[str, Any], autocast: Callable[[], Any] = contextlib.nullcontext
) -> tuple[int, int]:
    """(FLOPs of one training pass, forward and backward, over `batch`; the part of them that is the frozen
    language model's forward). Subtract the second when the language cache is on: in steady state every caption
    is cached and the language model does not run.

    Counted on the eager attention path (FlopCounterMode does not see every fused SDPA kernel, CPU's), with the
    language cache bypassed (so it is neither used nor filled) and the RNG streams left as they were.
    """
    from voltron.models.blocks import Attention, set_attention_impl

    impls = [m.impl for m in model.modules() if isinstance(m, Attention)]
    lm = getattr(model, "lm", None)
    cache_size = lm.cache_size if lm is not None else 0
    devices = [batch["frames"].device] if batch["frames"].device.type == "cuda" else []

    def fwd_bwd() -> None:
        with autocast():
            loss, _ = model.pretrain_loss(batch)
        loss.backward()

    set_attention_impl(model, "eager")
    try:
        if lm is not None:
            lm.cache_size = 0
        with torch.random.fork_rng(devices=devices):
            total = count_flops(fwd_bwd)
        language = 0
        if lm is not None and "input_ids" in batch:
            with autocast():
                language = count_flops(lambda: lm(batch["input_ids"], batch["attention_mask"]))
    finally:
        if lm is not None:
            lm.cache_size = cache_size
        attentions = [m for m in model.modules() if isinstance(m, Attention)]
        for module, impl in zip(attentions, impls):
            module.impl = impl
        model.zero_grad(set_to_none=True)
    return total, language


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
                raise MissingDependency("log.tensorboard=true needs tensorboard: pip install 'voltron[track]'") from err
            self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as err:
                raise MissingDependency("log.wandb=true needs wandb: pip install 'voltron[track]'") from err
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
