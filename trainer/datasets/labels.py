"""Turning a manifest row's label columns into a set of positive label names.

Two kinds of column:
- label columns (``labels`` and any named with ``label_columns``): each value holds label names,
  separated by any of ``separators`` ("|" and "," by default, so NIH's ``Effusion|Infiltration``
  and cxr-lungbox's ``COVID-19, ARDS`` both give two labels). A name in ``no_label_values``
  (compared ignoring case: by default "No Finding", "None", "todo", "Unknown", "?", "n/a") gives
  no label: such an image is negative for every label of that column.
- yes/no columns (``yes_no_columns``): the column's own name becomes a label when the value is a
  yes (Y, yes, 1, true; any case). Anything else gives no label; values that are neither a yes nor a
  no (N, no, 0, false) nor empty are counted as unclear so the reader can report them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_SEPARATORS = "|,"
DEFAULT_NO_LABEL_VALUES: tuple[str, ...] = ("No Finding", "None", "todo", "Unknown", "?", "n/a")
YES_VALUES = frozenset({"y", "yes", "1", "true"})
NO_VALUES = frozenset({"n", "no", "0", "false"})


def cell_text(value: object) -> str:
    """A cell as stripped text: None is empty; whole-valued numbers lose their ".0"."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


@dataclass(frozen=True)
class LabelRules:
    """Which columns hold labels and how their values read."""

    label_columns: tuple[str, ...] = ()
    yes_no_columns: tuple[str, ...] = ()
    separators: str = DEFAULT_SEPARATORS
    no_label_values: Collection[str] = DEFAULT_NO_LABEL_VALUES

    def __post_init__(self) -> None:
        object.__setattr__(self, "no_label_values",
                           frozenset(value.strip().lower() for value in self.no_label_values))

    def labels(self, values: Mapping[str, object]) -> tuple[set[str], list[str]]:
        """The positive labels of a row (values by column name), and its yes/no columns whose
        value was unclear."""
        found: set[str] = set()
        for column in self.label_columns:
            found.update(self.names_in(values.get(column)))
        unclear = []
        for column in self.yes_no_columns:
            text = cell_text(values.get(column)).lower()
            if text in YES_VALUES:
                found.add(column)
            elif text and text not in NO_VALUES and text not in self.no_label_values:
                unclear.append(column)
        return found, unclear

    def names_in(self, value: object) -> list[str]:
        """The label names of one label-column value (a text, or a JSON list of names)."""
        parts: Sequence[object] = value if isinstance(value, list) else [value]
        names = []
        for part in parts:
            text = cell_text(part)
            pieces = re.split(f"[{re.escape(self.separators)}]", text) if self.separators else [text]
            names.extend(piece.strip() for piece in pieces)
        return [name for name in names if name and name.lower() not in self.no_label_values]
