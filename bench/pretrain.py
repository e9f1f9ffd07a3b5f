"""Pretraining throughput, measured side by side in one run: SDPA vs eager attention, and the frozen language
encoder's output cached per caption vs recomputed for every example.

Runs the trainer's own `train_step` (forward, backward, AdamW) on V-Cond (ViT-S/16, 224 px by default) with uint8
frames and real Sth-Sth-style captions tokenised by the model's tokenizer. The configurations take turns step by
step on one model (attention implementation and cache are switched in place), so load from other processes on a
shared machine hits them alike; the reported figure is the median step. The cached configuration is measured in
steady state, after every caption of the pool has been seen once: on Sth-Sth-v2 that holds from the second
epoch when the cache can hold every training caption.

On CUDA it uses bf16 autocast (as the trainer) and reports MFU from a FLOP count of one training step
(torch.utils.flop_counter) against the device's peak at that precision (bf16 tensor cores for bf16; TF32 for fp32,
which the trainer allows). The configurations that recompute the language model are charged its forward pass; the
cached one is not, since it skips it. It extrapolates the paper's full run (Sth-Sth-v2, 400 epochs, ~338M examples)
both as the paper configs run it (language model every example) and with the language cache.

    .venv/bin/python bench/pretrain.py                       # CPU: batch 8, minilm
    .venv/bin/python bench/pretrain.py --device cuda --batch 128 --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch

PAPER_EXAMPLES = 338e6  # Sth-Sth-v2 state+language: 168,913 clips x 5 examples x 400 epochs
H100_BF16 = 989e12  # dense bf16 tensor-core peak of an H100 SXM
OBJECTS = ("a cup", "the lid", "a pen", "paper", "a box", "the phone", "a spoon", "keys", "a bottle", "tape")
TEMPLATES = ("putting {} onto the table", "pushing {} from left to right", "picking {} up", "covering {} with a cloth")


def caption_pool(n: int) -> list[str]:
    return [
        TEMPLATES[i % len(TEMPLATES)].format(OBJECTS[(i // len(TEMPLATES)) % len(OBJECTS)]) + f" {i}" for i in range(n)
    ]


def distilbert_shaped(directory: str) -> str:
    """A local model directory with distilbert-base-uncased's architecture (6 layers, 768 wide) and random weights,
    plus the offline MiniLM's tokenizer (the same BERT-uncased vocabulary). Weights do not change the cost, so this
    times the paper's language encoder without downloading it."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from voltron.models.language import MINILM_ALIAS, resolve_language_model

    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig()).save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_language_model(MINILM_ALIAS)).save_pretrained(directory)
    return directory


def make_batches(model, batch: int, n_captions: int, device: torch.device, seed: int = 0) -> list[dict]:
    """Batches that cycle through `n_captions` captions (each caption recurs, as in a video corpus)."""
    from voltron.models.language import tokenize

    generator = torch.Generator().manual_seed(seed)
    captions = caption_pool(n_captions)
    ids, mask = tokenize(captions, model.config.language_model, model.config.max_lang_len)
    batches = []
    for start in range(0, n_captions, batch):
        rows = [(start + i) % n_captions for i in range(batch)]
        size = model.config.image_size
        frames = torch.randint(0, 256, (batch, *model.image_shape()[:-2], size, size), generator=generator)
        batches.append({
            "frames": frames.to(torch.uint8).to(device),
            "input_ids": ids[rows].to(device),
            "attention_mask": mask[rows].to(device),
            "seed": torch.arange(start, start + batch, dtype=torch.int64).to(device),
        })  # fmt: skip
    return batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="v-cond", help="registered model id (default v-cond: ViT-S/16)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per configuration first")
    parser.add_argument("--captions", type=int, default=64, help="distinct captions the batches cycle through")
    parser.add_argument(
        "--language-model",
        default="minilm",
        help="minilm (offline default), distilbert-shaped (the paper's encoder's cost, random weights), or a path",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by GPU name)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    from voltron.devices import resolve_device
    from voltron.models.blocks import set_attention_impl
    from voltron.models.registry import build_model
    from voltron.pretrain.optim import build_optimizer
    from voltron.pretrain.tracking import peak_flops, training_flops
    from voltron.pretrain.trainer import Objective, autocast_factory, resolve_precision, train_step

    device = resolve_device(args.device)
    language_model = args.language_model
    if language_model == "distilbert-shaped":
        language_model = distilbert_shaped(tempfile.mkdtemp(prefix="voltron-bench-distilbert-"))
    torch.manual_seed(0)
    model = build_model(
        args.model, image_size=args.image_size, language_model=language_model, lang_cache_size=10 * args.captions
    ).to(device)
    objective = Objective(model)
    optimizer = build_optimizer(objective.named_parameters(), lr=1e-4)
    autocast = autocast_factory(device, args.precision)
    batches = make_batches(model, args.batch, args.captions, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # The language model's forward is counted on its own: the cached configuration skips it.
    total, language = training_flops(model, batches[0], autocast)
    flops_per_example, flops_cached = total / args.batch, (total - language) / args.batch
    precision = resolve_precision(device, args.precision)
    peak = peak_flops(device, args.peak_tflops, precision)

    configs = {  # name -> (attention, cache on)
        "sdpa": ("sdpa", False),
        "eager": ("eager", False),
        "sdpa+cache": ("sdpa", True),
    }
    lm = model.lm if hasattr(model, "lm") else None
    cache_size = lm.cache_size if lm is not None else 0
    for _, cache_on in configs.values():  # fill the cache with every caption of the pool once
        if cache_on and lm is not None:
            for batch in batches:
                with torch.no_grad():
                    lm(batch["input_ids"], batch["attention_mask"])
    times: dict[str, list[float]] = {name: [] for name in configs}
    step, names = 0, list(configs)
    for round_index in range(args.warmup + args.steps):
        for offset in range(len(names)):  # rotate the order each round: no configuration always goes first
            name = names[(round_index + offset) % len(names)]
            impl, cache_on = configs[name]
            set_attention_impl(model, impl)
            if lm is not None:
                lm.cache_size = cache_size if cache_on else 0
            batch = batches[step % len(batches)]
            sync()
            start = time.perf_counter()
            train_step(objective, optimizer, [batch], 1e-4, autocast=autocast)
            sync()
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)
            step += 1

    results = {}
    for name, values in times.items():
        median = statistics.median(values)
        results[name] = {"step_s": median, "examples_per_s": args.batch / median}
        flops = flops_cached if configs[name][1] else flops_per_example
        results[name]["flops_per_example"] = flops
        if peak and device.type == "cuda":
            results[name]["mfu"] = results[name]["examples_per_s"] * flops / peak
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.model} {args.image_size}px, batch {args.batch}, {name}, precision {precision}, language model "
          f"{args.language_model}, {args.steps} measured steps each (median), {args.captions} distinct captions")  # fmt: skip
    print(
        f"training FLOPs per example (fwd+bwd, counted): {flops_per_example / 1e9:.2f} GFLOP with the language model's "
        f"forward, {flops_cached / 1e9:.2f} GFLOP with the caption's language features cached"
    )
    if peak:
        print(f"MFU against {peak / 1e12:.0f} TFLOP/s, the device's dense {precision} peak")
    elif device.type == "cuda":
        print(f"no MFU: no known {precision} peak for {name} (pass --peak-tflops)")
    for key, value in results.items():
        mfu = f"  MFU {100 * value['mfu']:.1f}%" if "mfu" in value else ""
        print(f"  {key:<12} {value['examples_per_s']:8.2f} examples/s   {1000 * value['step_s']:8.1f} ms/step{mfu}")

    # Ratios of steps taken in the same round (seconds apart), then the median: robust to load that drifts.
    def paired(fast: str, slow: str) -> float:
        return statistics.median(b / a for a, b in zip(times[fast], times[slow]))

    sdpa_vs_eager, cache_gain = paired("sdpa", "eager"), paired("sdpa+cache", "sdpa")
    print(f"SDPA / eager attention (throughput ratio, median of paired rounds): {sdpa_vs_eager:.2f}x")
    print(f"language cache (steady state) / recomputing every caption: {cache_gain:.2f}x")
    best = max(v["examples_per_s"] for v in results.values())
    hours = PAPER_EXAMPLES / best / 3600
    print(f"paper run ({PAPER_EXAMPLES / 1e6:.0f}M examples) at the best measured rate on this device: {hours:,.1f} h")
    at_30 = PAPER_EXAMPLES * flops_per_example / (0.30 * H100_BF16) / 3600
    at_30_cached = PAPER_EXAMPLES * flops_cached / (0.30 * H100_BF16) / 3600
    print(
        f"from the FLOP count, one H100 (989 TFLOP/s bf16 dense) at 30% MFU: {at_30:.1f} h as the paper configs run "
        f"(language model every example), {at_30_cached:.1f} h with the language cache (--model.lang_cache_size)"
    )
    print(
        f"10k examples/s on one H100 is {100 * 1e4 * flops_per_example / H100_BF16:.1f}% MFU "
        f"({100 * 1e4 * flops_cached / H100_BF16:.1f}% with the language cache)"
    )
    summary = {
        "model": args.model,
        "image_size": args.image_size,
        "batch": args.batch,
        "device": name,
        "language_model": args.language_model,
        "flops_per_example": flops_per_example,
        "flops_per_example_cached": flops_cached,
        "results": results,
        "sdpa_over_eager": sdpa_vs_eager,
        "cache_over_no_cache": cache_gain,
        "paper_hours_at_best_rate": hours,
        "paper_hours_h100_30pct_mfu": at_30,
        "paper_hours_h100_30pct_mfu_cached": at_30_cached,
        "precision": precision,
        "peak_flops": peak,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
