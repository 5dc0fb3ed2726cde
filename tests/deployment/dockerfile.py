"""A small Dockerfile reader for the deployment tests: global ARGs and the stages with their
instructions, continuation lines joined and comments dropped (no heredocs, as in our Dockerfile)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        """The arguments of each `keyword` instruction of this stage, in order."""
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def environment(self) -> dict[str, str]:
        """The variables its ENV instructions set (KEY=value form)."""
        pairs = [word.split("=", 1) for text in self.arguments("ENV") for word in shlex.split(text)]
        return {key: value for key, value in pairs}


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def read_dockerfile(path: Path) -> Dockerfile:
    """Parse `path` into its global ARGs (before the first FROM) and its stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, arguments in _instructions(path.read_text()):
        if keyword == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments))
        elif keyword == "ARG":
            key, _, default = arguments.partition("=")
            global_args[key] = default.strip('"')
    return Dockerfile(global_args, stages)


def _instructions(text: str) -> list[tuple[str, str]]:
    instructions, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions
