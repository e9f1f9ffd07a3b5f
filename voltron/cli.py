"""The `voltron` command line: one entry point whose subcommands live next to the code they drive."""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import os
import re
import signal
import sys
import threading
from typing import Any, TypeVar

from voltron.errors import UserError, one_line
from voltron.io import Terminated, terminate_like_interrupt

# Bad input (missing or corrupt files, unknown names, wrong shapes, unreadable configs or bags) is reported as one
# line naming the problem, exit status 2; set VOLTRON_DEBUG=1 for the traceback. UserError is a ValueError. Library
# errors that mean bad input are named by (module, class) so that `voltron --help` imports neither library.
USER_ERRORS = (OSError, KeyError, ValueError)
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

Config = TypeVar("Config")


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


# === Configs: YAML file + dotted overrides -> typed dataclass, with errors for people ===
def parse_config(config_class: type[Config], config_path: str | None = None, args: list[str] | None = None) -> Config:
    """`config_class` from its defaults, then the YAML at `config_path` (or `--config_path FILE` in `args`), then
    the dotted overrides in `args` (`--train.steps=500`): the one place every command calls draccus.

    Every way the input can be wrong becomes a one-line UserError naming the file or override, the key, the value
    and what was expected: an unknown key (with the closest valid key), a value of the wrong type, malformed YAML.
    A missing config file raises FileNotFoundError. `--help` in `args` prints every key and exits (SystemExit).
    """
    import draccus
    from draccus.utils import DecodingError, DraccusException, ParsingError

    from voltron.packaged_configs import resolve_config_path

    args = list(args or [])
    path = _option_value(args, "config_path") or config_path
    if path is not None:  # a file, or the name of a config shipped with voltron (`voltron config list`)
        path = config_path = resolve_config_path(path)
        args = _without_option(args, "config_path")
    try:
        return draccus.parse(config_class, config_path=config_path, args=args, exit_on_error=False)
    except DecodingError as err:
        raise _decoding_error(err, config_class, path, args) from err
    except ParsingError as err:
        raise _parsing_error(err, path) from err
    except argparse.ArgumentError as err:  # e.g. `--train.steps` with no value
        raise UserError(str(err), source="command line") from err
    except DraccusException as err:  # "unrecognized arguments: ..."
        raise _unknown_argument_error(err, config_class, args) from err


def config_keys(config_class: type) -> list[str]:
    """Every dotted key draccus accepts for `config_class` (sections included), e.g. ['optim', 'optim.lr', ...]."""
    from draccus.argparsing import ArgumentParser

    actions = ArgumentParser(config_class).parser._actions
    flags = (flag for action in actions for flag in action.option_strings if flag.startswith("--"))
    return sorted({flag[2:] for flag in flags} - {"help", "config_path"})


def closest_key(key: str, keys: list[str]) -> str | None:
    """The valid key `key` was most likely meant to be: a close spelling, else the same leaf in another section."""
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaf = key.rsplit(".", 1)[-1]
    leaves = {k.rsplit(".", 1)[-1]: k for k in reversed(keys)}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)
    return leaves[close[0]] if close else None


def _unknown_key_error(key: str, keys: list[str], source: str, value: Any = None) -> UserError:
    guess = closest_key(key, keys)
    hint = f"did you mean {guess!r}?" if guess else "run the command with --help to list every key"
    shown = f"{key!r}" if value is None else f"{key!r} (value {value!r})"
    return UserError(f"unknown config key {shown}; {hint}", source=source)


def _option_value(args: list[str], key: str) -> str | None:
    """The value given for `--key` in `args`, as `--key=value` or `--key value`; None when absent."""
    for index, arg in enumerate(args):
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1]
        if arg == f"--{key}":
            return args[index + 1] if index + 1 < len(args) else ""
    return None


def _without_option(args: list[str], key: str) -> list[str]:
    """`args` without `--key=value` / `--key value`."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == f"--{key}":
            skip = True
        elif not arg.startswith(f"--{key}="):
            out.append(arg)
    return out


def _unknown_argument_error(err: Exception, config_class: type, args: list[str]) -> UserError:
    keys = config_keys(config_class)
    for arg in args:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            if key not in keys and key not in ("config_path", "help"):
                return _unknown_key_error(key, keys, "command line", value or None)
    return UserError(f"{err}; overrides look like --section.key=value", source="command line")


def _decoding_error(err: Exception, config_class: type, path: str | None, args: list[str]) -> UserError:
    key = ".".join(err.key_path)
    unknown = re.match(r"The fields (.*) are not valid for", err.message)
    if unknown:  # a key in the YAML file (or a section override) that the dataclass does not have
        name = re.findall(r"`([^`]+)`", unknown.group(1))[0]
        full = f"{key}.{name}" if key else name
        return _unknown_key_error(full, config_keys(config_class), path or "command line")
    value = _option_value(args, key) if key else None
    if value is not None:
        return UserError(err.message, source="command line", key=f"--{key}", value=value)
    return UserError(err.message, source=path or "config", key=key or None)


def _parsing_error(err: Exception, path: str | None) -> UserError:
    cause = err.__cause__
    mark = getattr(cause, "problem_mark", None)
    if mark is not None:  # yaml.MarkedYAMLError
        problem = getattr(cause, "problem", None) or cause
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return UserError(f"malformed YAML at {where}: {problem}", source=path)
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return UserError(f"{err}{detail}", source=path or "config")


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
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
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
