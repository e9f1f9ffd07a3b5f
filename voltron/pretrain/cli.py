"""`voltron pretrain --config FILE.yaml [--dotted.key=value ...]`: argparse only here; the trainer loads in the handler."""

from __future__ import annotations

import argparse
import sys

from voltron.config import add_config_option

USAGE = "voltron pretrain --config configs/pretrain/v-cond.yaml [--optim.lr=3e-4 --train.max_steps=100 ...]"
DESCRIPTION = (
    "Pretrain a Voltron encoder (or a baseline) on a preprocessed video-language store. Settings come from a YAML "
    "config and dotted overrides; `voltron pretrain --help` lists every key. A run directory that already holds "
    "checkpoints is resumed exactly. For several processes or nodes launch the same config with torchrun: "
    "torchrun --nnodes N --nproc-per-node G -m voltron.pretrain --config FILE.yaml."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain", help="pretrain an encoder (torchrun for many processes)", usage=USAGE, description=DESCRIPTION,
        add_help=False,
    )  # fmt: skip
    add_config_option(parser, "voltron.pretrain.config:PretrainConfig", ", e.g. configs/pretrain/v-cond.yaml")
    parser.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    return main((["--config", args.config] if args.config else []) + list(args.overrides))


def main(argv: list[str] | None = None) -> int:
    """The whole command: parse `--config` and overrides, train, and turn expected failures into messages."""
    from voltron.pretrain.config import check_inputs_offline, parse_args
    from voltron.pretrain.trainer import NonFiniteLossError, PretrainError, pretrain

    argv = sys.argv[1:] if argv is None else argv
    try:
        config = parse_args(argv)
        check_inputs_offline(config)  # a missing store or language model fails here, before any loading
    except (FileNotFoundError, PretrainError) as err:
        print(f"voltron pretrain: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as err:  # draccus/argparse already printed help or the usage error
        return int(err.code or 0)
    try:
        pretrain(config)
    except NonFiniteLossError as err:
        print(f"voltron pretrain: error: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, PretrainError) as err:
        print(f"voltron pretrain: error: {err}", file=sys.stderr)
        return 2
    return 0
