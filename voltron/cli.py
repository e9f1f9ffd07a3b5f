"""The `voltron` command line: one entry point whose subcommands live next to the code they drive."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# Bad input (missing or corrupt files, unknown names, wrong shapes) is reported as one line naming the problem;
# set VOLTRON_DEBUG=1 for the traceback.
USER_ERRORS = (OSError, KeyError, ValueError)

# Each module exposes `register(subparsers)`, which adds its subcommands and sets `func` on them.
# Registration must only touch argparse: heavy imports (torch, mujoco, ...) happen inside the handlers,
# so `voltron --help` stays fast and a missing optional extra only breaks the commands that need it.
COMMAND_MODULES = (
    "voltron.models.cli",  # models, convert-upstream
    "voltron.datasets.cli",  # preprocess
    "voltron.sim.cli",  # sim collect, sim make-corpus
    "voltron.pretrain.cli",  # pretrain
    "voltron.policy.cli",  # train-policy, eval, eval-suite
    "voltron.ros.cli",  # ros serve, ros bag2demos
    "voltron.demo",  # demo
)


def collect_config_overrides(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make a subcommand gather the arguments it does not define (dotted config overrides such as
    `--train.steps=500`) into `args.overrides` for draccus, instead of argparse rejecting them."""
    parser.set_defaults(overrides=[])
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extras = parse_known(args, namespace)
        namespace.overrides = [*getattr(namespace, "overrides", []), *extras]
        return namespace, []

    parser.parse_known_args = parse_known_args
    return parser


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voltron", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if _module_exists(name):
            importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("VOLTRON_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"voltron {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
