"""The names of the inference paths and the command-line flags that choose one, importable without torch."""

from __future__ import annotations

import argparse

PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("eager", "compile", "onnxruntime")
AUTO = "auto"
BACKEND_PRECISIONS = {"eager": ("fp32", "bf16", "int8"), "compile": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8")}


def add_inference_arguments(parser: argparse.ArgumentParser, recorded: str) -> None:
    """`--precision` and `--inference-backend` (defaults fp32 and eager: the module as trained); `recorded` says
    where the command writes down the path that served."""
    parser.add_argument(
        "--precision", default="fp32", choices=(AUTO, *PRECISIONS),
        help="encoder inference precision (voltron.models.inference; default fp32; auto picks by hardware and accuracy)",
    )  # fmt: skip
    parser.add_argument(
        "--inference-backend", default="eager", choices=(AUTO, *BACKENDS),
        help=f"encoder inference backend (default eager); the path that serves is recorded in {recorded}",
    )  # fmt: skip
