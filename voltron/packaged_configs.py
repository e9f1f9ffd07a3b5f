"""The YAML configs shipped inside the package (`voltron config list`, `voltron config show NAME`), and the lookup
that lets `--config NAME` name one of them instead of a file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from voltron.config import command_group
from voltron.errors import UserError

CONFIG_SUFFIXES = (".yaml", ".yml")


def config_root() -> Path:
    """The folder of packaged configs: `voltron/configs/` in an installed wheel (package data mapped from the
    repository's `configs/`, see pyproject.toml), else the checkout's `configs/` (an editable install, a clone)."""
    for root in (Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parents[1] / "configs"):
        if root.is_dir():
            return root
    raise FileNotFoundError(f"no packaged configs beside {Path(__file__).parent}; reinstall voltron")


def packaged_configs() -> dict[str, Path]:
    """Every packaged config by name, `folder/stem` (e.g. "pretrain/v-cond"), sorted."""
    root = config_root()
    found = (p for p in root.rglob("*") if p.suffix in CONFIG_SUFFIXES and p.is_file())
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(found)}


def find_packaged_config(name: str) -> Path:
    """The packaged config `name`: a full name ("pretrain/v-cond") or a stem that only one folder has ("v-cond")."""
    configs = packaged_configs()
    if name in configs:
        return configs[name]
    matches = [key for key in configs if key.rsplit("/", 1)[-1] == name]
    if len(matches) == 1:
        return configs[matches[0]]
    if matches:
        raise UserError(f"names {len(matches)} packaged configs", source="--config", value=name, key="name",
                        expected=f"one of {matches}")  # fmt: skip
    raise FileNotFoundError(
        f"{name}: no such config file, and no packaged config of that name; expected a YAML file or one of "
        f"{list(configs)} (voltron config list)"
    )


def resolve_config_path(value: str | os.PathLike) -> str:
    """`value` if it is a file; else the packaged config it names (no .yaml suffix). FileNotFoundError otherwise."""
    text = str(value)
    if os.path.isfile(text):
        return text
    if Path(text).suffix in CONFIG_SUFFIXES or os.path.isabs(text) or text.startswith("."):
        raise FileNotFoundError(f"{text}: config file not found")
    return str(find_packaged_config(text))


def _summary(path: Path) -> str:
    """A config's first comment line, which says what it is."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def run_list(args: argparse.Namespace) -> int:
    configs = packaged_configs()
    width = max(map(len, configs), default=0)
    for name, path in configs.items():
        print(f"{name:<{width}}  {_summary(path)}".rstrip())
    print(f"(in {config_root()}; use one with --config NAME, e.g. voltron pretrain --config v-cond)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    print(find_packaged_config(args.name).read_text(), end="")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = command_group(subparsers, "config", "list or print the YAML configs shipped with voltron")
    listing = commands.add_parser("list", help="every packaged config, with what it is")
    listing.set_defaults(func=run_list)
    show = commands.add_parser(
        "show", help="print a packaged config (copy it to edit: voltron config show NAME > f.yaml)"
    )
    show.add_argument("name", help="a name from `voltron config list`, e.g. v-cond or pretrain/v-cond")
    show.set_defaults(func=run_show)
