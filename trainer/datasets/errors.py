"""The error every dataset reader raises: one exception listing each problem found, by place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model.errors import ChextrievError

# At most this many problems are spelled out in the message; `problems` keeps them all.
MESSAGE_PROBLEMS = 10


@dataclass(frozen=True)
class DatasetProblem:
    """One problem: the file (or option) it is in and, when known, the row (line number) and
    column of a table or the field of a JSON document."""

    source: str
    problem: str
    row: int | None = None
    column: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        place = self.source
        if self.row is not None:
            place += f" line {self.row}"
        if self.column is not None:
            place += f", column {self.column!r}"
        if self.field is not None:
            place += f", field {self.field!r}"
        return f"{place}: {self.problem}"


class DatasetError(ChextrievError):
    """A dataset cannot be read as described; `problems` lists every problem found, in order."""

    def __init__(self, problems: Sequence[DatasetProblem]):
        self.problems = list(problems)
        shown = "; ".join(str(problem) for problem in self.problems[:MESSAGE_PROBLEMS])
        more = len(self.problems) - MESSAGE_PROBLEMS
        suffix = f"; and {more} more" if more > 0 else ""
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the dataset: {shown}{suffix}")


def option_error(option: str, problem: str) -> DatasetError:
    """A DatasetError about a reader option (not a row of a file)."""
    return DatasetError([DatasetProblem(f"option {option}", problem)])
