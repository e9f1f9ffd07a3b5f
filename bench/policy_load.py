"""What verifying a policy's encoder costs: SHA-256 of the encoder's weights file against loading the encoder.

    .venv/bin/python bench/policy_load.py [--model v-cond] [--repeats 3]

A policy on a frozen pretrained encoder checks the encoder's model.safetensors against the digest it recorded before
loading it (voltron/policy/model.py); this prints both times, measured side by side on the same file, and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path


def timed(fn, repeats: int) -> float:
    fn()  # warm: page cache, lazy imports
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="v-cond", help="registered model id (random init; only the size matters)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import voltron
    from voltron.io import sha256_file

    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        voltron.load(args.model, pretrained=False)[0].save_pretrained(folder)
        weights = Path(folder) / "model.safetensors"
        size_mib = weights.stat().st_size / 2**20
        digest_s = timed(lambda: sha256_file(weights), args.repeats)
        load_s = timed(lambda: voltron.load(folder), args.repeats)
    print(
        f"{args.model} ({size_mib:.1f} MiB of weights): sha256 {digest_s:.3f} s, voltron.load {load_s:.3f} s, "
        f"verification adds {digest_s / load_s:.2f}x the load time"
    )


if __name__ == "__main__":
    main()
