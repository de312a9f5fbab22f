"""The exceptions fastsg raises on bad input.  Each names the place the problem is."""
from __future__ import annotations

from dataclasses import dataclass


class FastsgError(Exception):
    """Base class of every error fastsg raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One problem in a world file or a mutation: where (a path like
    ``security_groups[2].ingress[4].cidr``) and what (a message quoting the bad value)."""
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class WorldError(FastsgError, ValueError):
    """A world file or a mutation is invalid.  ``problems`` lists every problem found;
    ``source`` is the file it came from, if any.  Nothing was loaded or changed."""

    def __init__(self, problems, source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        n = len(self.problems)
        lines = [f"{head}{n} problem{'s' if n != 1 else ''}:"] + [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines) if n != 1 else f"{head}{self.problems[0]}")


class CaptureError(FastsgError, ValueError):
    """A capture file cannot be read.  Names the file, the record number (from 0) and the
    byte offset where the problem is."""

    def __init__(self, message: str, path: str | None = None, record: int | None = None,
                 offset: int | None = None):
        self.path = path
        self.record = record
        self.offset = offset
        self.reason = message
        where = []
        if path is not None:
            where.append(str(path))
        if record is not None:
            where.append(f"record {record}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
