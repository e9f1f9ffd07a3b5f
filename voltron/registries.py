"""The rule every name registry shares (model families, sampling schemes, LR schedules): a name is registered once."""

from __future__ import annotations

from typing import TypeVar

Item = TypeVar("Item")


def register_once(table: dict[str, Item], name: str, item: Item, what: str) -> Item:
    """Add `item` to `table` under `name` and return it; a second registration of `name` is a ValueError (two
    modules claiming one name would otherwise silently replace each other's entry)."""
    if name in table:
        raise ValueError(f"{what} {name!r} is already registered")
    table[name] = item
    return item
