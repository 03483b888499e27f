"""How a setting is declared and how its value is spelled: one place for both.

Options types (the run config, `tune`'s and `robustness`' options) declare each setting with
`setting(default, help, choices)`: the CLI reads its flag's help, default and choices from
there, so a default is stated once. Values arrive as text from flags, YAML and `mlflow run -P`;
`is_unset` and `parse_bool` are the one reading of "unset" and of booleans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from mnist_lab.errors import ConfigError

# MLproject passes a parameter left at its default as "" (or the declared "none").
UNSET = ("", "none", "null")
TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


def setting(default: Any = None, help: str = "", choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field whose metadata carries its help and choices."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None}
    return dataclasses.field(default=default, metadata=metadata)


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get("help", "")


def choices_of(field: dataclasses.Field) -> tuple[Any, ...] | None:
    return field.metadata.get("choices")


def is_unset(value: Any, none_is_a_choice: bool = False) -> bool:
    """Whether `value` means "not given": None, "", or (unless "none" is one of the setting's
    own choices, such as `--pruner none`) "none"/"null"."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    text = value.strip().lower()
    return text == "" or (text in UNSET and not none_is_a_choice)


def parse_bool(value: Any, name: str) -> bool:
    """true/false, 1/0, yes/no (any case), or a bool; ConfigError naming the setting else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; give true or false")


def parse_number(value: Any, name: str, kind: type) -> Any:
    """`value` as an int or float, ConfigError naming the setting when it is not one."""
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a valid {kind.__name__}") from None
