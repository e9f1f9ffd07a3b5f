"""One config path for every command: a typed dataclass from its defaults, then a YAML file (`--config FILE`, or
the name of a packaged config), then dotted overrides (`--train.steps=100`, `--train.steps 100` or `train.steps=100`).

Errors name the file or override, the key, the value and what was expected; `--help` lists every key with its type,
default and description under the command's own name; `save_config` writes the resolved config next to an output
and `load_saved_config` reads it back through the same path. draccus does the decoding underneath.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

from voltron.errors import UserError

Config = TypeVar("Config")
RESOLVED_CONFIG = "config.yaml"  # the resolved config a command writes next to its outputs
_DOTTED = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*=")


def normalize_overrides(args: list[str]) -> list[str]:
    """Command-line overrides in draccus's spelling: `key.sub=value` gains its `--`, and the old robot-config form
    `--set KEY=VALUE` is refused with the new spelling."""
    out = []
    for index, arg in enumerate(args):
        if arg == "--set" or arg.startswith("--set="):
            given = arg.split("=", 1)[1] if "=" in arg else (args[index + 1] if index + 1 < len(args) else "KEY=VALUE")
            raise UserError(
                f"--set {given} is no longer accepted; give the override as --{given}",
                source="command line",
                expected="dotted overrides such as --safety.watchdog_ms=300",
            )
        out.append(f"--{arg}" if _DOTTED.match(arg) else arg)
    return out


def parse_config(
    config_class: type[Config],
    config_path: str | None = None,
    args: list[str] | None = None,
    *,
    prog: str | None = None,
) -> Config:
    """`config_class` from its defaults, then the YAML at `config_path` (or `--config FILE` in `args`), then the
    dotted overrides in `args` (`--train.steps=500`, `--train.steps 500` or `train.steps=500`).

    Every way the input can be wrong becomes a one-line UserError naming the file or override, the key, the value
    and what was expected: an unknown key (with the closest valid key), a value of the wrong type, malformed YAML.
    A missing config file raises FileNotFoundError. `--help` in `args` prints every key (under `prog`) and exits.
    """
    import draccus
    from draccus.utils import DecodingError, DraccusException, ParsingError

    from voltron.packaged_configs import resolve_config_path

    args = normalize_overrides(args or [])
    if "--help" in args or "-h" in args:
        print(format_config_help(config_class, prog or "voltron"))
        raise SystemExit(0)
    path = _option_value(args, "config") or _option_value(args, "config_path") or config_path
    if path is not None:  # a file, or the name of a config shipped with voltron (`voltron config list`)
        path = config_path = resolve_config_path(path)
        args = _without_option(_without_option(args, "config"), "config_path")
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
            if key not in keys and key not in ("config", "config_path", "help"):
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


def add_config_option(parser: argparse.ArgumentParser, config_class: str, example: str | None = None) -> None:
    """Give a subcommand `--config FILE` and dotted overrides of `config_class` ("module:Class", imported only when
    needed, so `voltron --help` stays light): `voltron.cli.main` hands the arguments argparse does not define to
    the handler as `args.overrides`, and `-h/--help` lists the subcommand's flags and then every config key."""
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"YAML config (or a packaged config's name, `voltron config list`) stating what differs{example or ''}",
    )
    parser.add_argument("-h", "--help", action=_ConfigHelp, nargs=0, help="show the flags and every config key, exit")
    parser.set_defaults(config_class=config_class, overrides=[])


class _ConfigHelp(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(parser.format_help().rstrip())
        print()
        print(format_config_help(import_config_class(parser.get_default("config_class")), None))
        parser.exit()


def import_config_class(path: str | type) -> type:
    """The dataclass named "module:Class" (or the class itself)."""
    if isinstance(path, type):
        return path
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def describe_keys(config_class: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, one-line description) for every leaf field of `config_class`, in order; the
    description is the field's comment in the source (what draccus reads too)."""
    from draccus.wrappers.docstring import get_attribute_docstring

    hints = typing.get_type_hints(config_class)
    rows = []
    for field in dataclasses.fields(config_class):
        kind = hints.get(field.name, field.type)
        if dataclasses.is_dataclass(kind):
            rows.extend(describe_keys(kind, f"{prefix}{field.name}."))
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = "(required)"
        doc = get_attribute_docstring(config_class, field.name)
        text = doc.comment_inline or doc.comment_above or doc.docstring_below or ""
        kind_text = re.sub(r"\b(typing|builtins|collections\.abc)\.", "", getattr(kind, "__name__", None) or str(kind))
        if not isinstance(kind, type) or kind.__module__ != "builtins":
            kind_text = re.sub(r"\b(typing|builtins|collections\.abc)\.", "", str(kind))
        rows.append((f"{prefix}{field.name}", kind_text, default, " ".join(text.split())))
    return rows


def format_config_help(config_class: type, prog: str | None) -> str:
    """Every key of `config_class` with its type, default and description, as `--help` prints it."""
    lines = [f"usage: {prog} [--config FILE] [--KEY=VALUE ...]", ""] if prog else []
    lines.append("config keys (set in the --config YAML, or as --key=value / --key value / key=value):")
    rows = describe_keys(config_class)
    width = max((len(k) for k, *_ in rows), default=0) + 2
    for key, kind, default, text in rows:
        lines.append(f"  --{key:<{width}}{kind} (default: {default!r}){'  ' + text if text else ''}")
    return "\n".join(lines)


def config_to_dict(config: Any) -> dict[str, Any]:
    """`config` as plain JSON/YAML values (what checkpoints embed); `config_from_dict` reads it back."""
    import draccus

    return draccus.encode(config)


def config_from_dict(config_class: type[Config], data: dict[str, Any], source: str = "config") -> Config:
    """A config from `config_to_dict`'s form, with the same one-line errors as a YAML file (`source` names it)."""
    import draccus
    from draccus.utils import DecodingError

    try:
        return draccus.decode(config_class, data)
    except DecodingError as err:
        raise _decoding_error(err, config_class, source, []) from err


def config_yaml(config: Any) -> str:
    """The fully resolved `config` as YAML text."""
    import io

    import draccus

    stream = io.StringIO()
    draccus.dump(config, stream)
    return stream.getvalue()


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the fully resolved `config` as YAML at `path` (atomically): what a run used, loadable by
    `load_saved_config` or as `--config` for a rerun."""
    from voltron.io import atomic_write_text

    return atomic_write_text(path, config_yaml(config))


def load_saved_config(config_class: type[Config], path: str | os.PathLike) -> Config:
    """A config written by `save_config`, through the same checks as `--config`."""
    return parse_config(config_class, str(path))


def flag_overrides(args: argparse.Namespace, flags: dict[str, str] | list[str]) -> list[str]:
    """Dotted overrides for the command-line flags that were given (`flags`: argparse dest -> config key, or names
    that are both). A flag argparse left out (argument_default=SUPPRESS) or at None is not an override, so the
    config file's value stands."""
    import json

    mapping = flags if isinstance(flags, dict) else {name: name for name in flags}
    out = []
    for dest, key in mapping.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, bool | list | tuple) else str(value)
        out.append(f"--{key}={text}")
    return out


def config_command(
    subparsers: argparse._SubParsersAction, name: str, config_class: str, *, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand whose flags are keys of `config_class` ("module:Class"): flags default to absent (so a flag given
    wins over the --config file and an absent one leaves it), and it takes --config, dotted overrides and -h."""
    parser = subparsers.add_parser(
        name, help=help, add_help=False, argument_default=argparse.SUPPRESS,
        description=f"{description} Every flag is also a key of the config (--config FILE, dotted overrides); a "
        "flag given here wins over the file.",
    )  # fmt: skip
    add_config_option(parser, config_class)
    return parser


def command_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A command that only groups subcommands (`voltron sim`, `voltron ros`, ...): its subparsers (the chosen one in
    `args.<name>_command`), while the command alone prints its help and exits 2."""
    parser = subparsers.add_parser(name, help=help)
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    return parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def command_config(config_class: type[Config], args: argparse.Namespace, prog: str, required: tuple[str, ...] = ()):
    """The config of a `config_command`: defaults, `--config`, the flags given, then the dotted overrides; each key
    in `required` must be set by one of them (a one-line UserError names it otherwise)."""
    flags = flag_overrides(args, [f.name for f in dataclasses.fields(config_class)])
    config = parse_config(config_class, args.config, flags + args.overrides, prog=prog)
    for key in required:
        if not getattr(config, key):
            raise UserError("is required", source=args.config or "command line", key=key,
                            expected=f"--{key.replace('_', '-')} or {key}: in --config")  # fmt: skip
    return config
