"""Encoder throughput and latency: SDPA vs an eager reference attention, fp32 vs bf16 autocast, in one run.

    .venv/bin/python bench/encoder.py [--model v-cond] [--batch 32] [--iters 3] [--device cpu|cuda]

Each configuration is timed in alternation (round-robin) so machine noise hits all of them alike; ratios
are what to read, absolute numbers on a shared machine are noise.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings

import torch

import voltron
from voltron.models.blocks import set_attention_impl


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="v-cond")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = voltron.load(args.model, pretrained=False, device=args.device)
    lang_batch = ["open the drawer"] * args.batch if model.uses_language else None
    images = torch.randn(args.batch, *model.image_shape(), device=args.device)
    bf16_ok = args.device == "cuda" or torch.backends.mkldnn.is_available()
    configs = [(impl, dtype) for impl in ("eager", "sdpa") for dtype in (["fp32", "bf16"] if bf16_ok else ["fp32"])]

    def run(impl: str, dtype: str, batch: int):
        set_attention_impl(model, impl)
        autocast = torch.autocast(args.device, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        lang = lang_batch[:batch] if lang_batch else None
        with torch.inference_mode(), autocast:
            model(images[:batch], lang)

    for impl, dtype in configs:  # warm-up
        run(impl, dtype, args.batch)
    throughput = {c: [] for c in configs}
    latency = {c: [] for c in configs}
    for _ in range(args.iters):
        for config in configs:
            throughput[config].append(args.batch / timed(lambda c=config: run(*c, args.batch), args.device))
            latency[config].append(1000 * timed(lambda c=config: run(*c, 1), args.device))

    print(
        f"{args.model} ({model.num_parameters() / 1e6:.1f}M params) on {args.device}, {args.iters} rounds, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'attention':<10}{'dtype':<7}{'images/s @' + str(args.batch):>16}{'latency ms @1':>16}")
    for config in configs:
        tput, lat = statistics.median(throughput[config]), statistics.median(latency[config])
        print(f"{config[0]:<10}{config[1]:<7}{tput:>16.1f}{lat:>16.1f}")
    base = statistics.median(throughput[("eager", "fp32")])
    for config in configs[1:]:
        print(
            f"ratio {config[0]}/{config[1]} vs eager/fp32 throughput: {statistics.median(throughput[config]) / base:.2f}x"
        )


if __name__ == "__main__":
    main()
