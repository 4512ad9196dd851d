"""Errors the store raises; the control API maps them to 404 and 409."""

from __future__ import annotations


class NotFound(LookupError):
    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        super().__init__(f"{kind} {name!r} not found")


class Conflict(RuntimeError):
    """The client's resourceVersion is stale: someone else wrote the object since it read it."""

    def __init__(self, kind: str, name: str, expected: int, actual: int) -> None:
        self.kind, self.name = kind, name
        super().__init__(
            f"{kind} {name!r} was modified (resourceVersion is {actual}, the update was based on "
            f"{expected}); get it again and re-apply your change"
        )


class SchemaTooNew(RuntimeError):
    pass
