"""The `voltron` command line: one entry point whose subcommands live next to the code they drive."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
import threading

from voltron.errors import MissingDependency, UserError, one_line
from voltron.io import Terminated, terminate_like_interrupt

# Bad input (missing or corrupt files, unknown names, wrong shapes, unreadable configs or bags) is reported as one
# line naming the problem, exit status 2; set VOLTRON_DEBUG=1 for the traceback. UserError is a ValueError; a
# missing optional package (MissingDependency) is one line too. Library errors that mean bad input are named by
# (module, class) so that `voltron --help` imports neither library.
USER_ERRORS = (OSError, KeyError, ValueError, MissingDependency)
LIBRARY_USER_ERRORS = (("draccus.utils", "ParsingError"), ("rosbags.highlevel.anyreader", "AnyReaderError"))

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
    "voltron.packaged_configs",  # config list, config show
)


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


def is_user_error(err: BaseException) -> bool:
    """Whether `err` means bad input (reported as one line) rather than a bug (reported with its traceback)."""
    types = list(USER_ERRORS)
    for module, name in LIBRARY_USER_ERRORS:
        if module in sys.modules:  # a library that was never imported cannot have raised
            types.append(getattr(sys.modules[module], name))
    return isinstance(err, tuple(types))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    if extras and getattr(args, "config_class", None) is None:  # only config commands take dotted overrides
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if getattr(args, "config_class", None) is not None:
        from voltron.config import normalize_overrides

        try:
            args.overrides = normalize_overrides(extras)
        except UserError as err:
            print(f"voltron {args.command}: error: {err}", file=sys.stderr)
            return 2
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        terminate_like_interrupt()  # a job killed with SIGTERM cleans up as after Ctrl-C: no partial output
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return Terminated.exit_code if terminated else 130
    except Exception as err:
        if not is_user_error(err) or os.environ.get("VOLTRON_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"voltron {args.command}: error: {one_line(message)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)  # main() called in-process (tests) leaves the caller's handler


if __name__ == "__main__":
    sys.exit(main())
