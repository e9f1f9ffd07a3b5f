"""The one error type for bad user input: a config, file, key or value that voltron cannot use as given."""

from __future__ import annotations

from typing import Any

_UNSET: Any = object()


class UserError(ValueError):
    """Bad input from a user, reported as one line naming the file, the key, the value and what was expected.

    A subclass of ValueError, so code that catches ValueError keeps working. The `voltron` command prints it as
    `error: <message>` and exits 2 (VOLTRON_DEBUG=1 shows the traceback). The parts are kept as attributes for
    callers that want them: `source` (a file or "command line"), `key`, `value` and `expected`.

        UserError("not an int", source="run/config.json", key="embed_dim", value="big", expected="an int")
        -> "run/config.json: embed_dim='big': not an int; expected an int"
    """

    def __init__(
        self,
        message: str = "",
        *,
        source: Any = None,
        key: str | None = None,
        value: Any = _UNSET,
        expected: str | None = None,
    ) -> None:
        parts = [str(source)] if source is not None else []
        if key is not None:
            parts.append(key if value is _UNSET else f"{key}={value!r}")
        if message:
            parts.append(message)
        text = ": ".join(parts)
        if expected:
            text = f"{text}; expected {expected}" if text else f"expected {expected}"
        super().__init__(one_line(text))
        self.source, self.key, self.expected = source, key, expected
        self.value = None if value is _UNSET else value


class MissingDependency(ModuleNotFoundError):
    """An optional package a command needs is not installed: the message names it and the `pip install` that adds it.

    A ModuleNotFoundError, so code that catches import errors keeps working; the `voltron` command prints it as one
    line, like a UserError (the fix is in the user's environment, not in voltron).
    """


def one_line(text: Any) -> str:
    """`text` with its lines joined and runs of whitespace collapsed (error messages must fit one line)."""
    return " ".join(str(text).split())
