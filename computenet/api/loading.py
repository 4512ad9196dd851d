"""Turn YAML or JSON documents into resources, with errors a person can act on.

Every problem in a file is reported at once, each naming the file, the document
(1-based, in file order), the field path as written in YAML and what was expected,
e.g. ``demo.yaml doc 2: spec.roles[0].replicas: must be >= 0, got -1``. Nothing
is applied from a file that has any problem, so loading is all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .kinds import KINDS, AnyResource
from .meta import API_VERSION


@dataclass(frozen=True)
class Problem:
    source: str
    doc: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source} doc {self.doc}" if self.doc else self.source  # doc 0: the file itself
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ManifestError(ValueError):
    """One or more documents are invalid; `problems` lists each."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def load_file(path: str | Path) -> list[AnyResource]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ManifestError([Problem(str(path), 0, "", f"cannot read file: {exc.strerror}")]) from exc
    return load_text(text, source=p.name)


def load_text(text: str, *, source: str = "<input>") -> list[AnyResource]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([Problem(source, 1, "", f"invalid YAML{where}: {problem}")]) from exc
    return load_documents(docs, source=source)


def load_documents(docs: Iterable[object], *, source: str = "<input>") -> list[AnyResource]:
    resources: list[AnyResource] = []
    problems: list[Problem] = []
    for index, doc in enumerate(docs, start=1):
        try:
            resources.append(parse_resource(doc, source=source, doc=index))
        except ManifestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    _check_duplicates(resources, source)
    return resources


def parse_resource(data: object, *, source: str = "<input>", doc: int = 1) -> AnyResource:
    """Validate one document; raise ManifestError listing every problem in it."""
    if not isinstance(data, Mapping):
        got = type(data).__name__
        msg = f"must be a mapping with apiVersion, kind, metadata and spec, got {got}"
        raise ManifestError([Problem(source, doc, "", msg)])
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        msg = f"must be one of {', '.join(sorted(KINDS))}, got {kind!r}"
        raise ManifestError([Problem(source, doc, "kind", msg)])
    try:
        return cast(AnyResource, cls.model_validate(data))
    except ValidationError as exc:
        raise ManifestError(
            [Problem(source, doc, _path(e["loc"]), _explain(e)) for e in exc.errors()]
        ) from exc


def _check_duplicates(resources: list[AnyResource], source: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    problems = []
    for index, res in enumerate(resources, start=1):
        key = (res.kind, res.name)
        if key in seen:
            msg = f"{res.kind} {res.name!r} is already defined in doc {seen[key]}; give it another name"
            problems.append(Problem(source, index, "metadata.name", msg))
        seen.setdefault(key, index)
    if problems:
        raise ManifestError(problems)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _explain(error: ErrorDetails) -> str:
    """Rephrase pydantic's message as 'must be ..., got X' where we know how."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = f", got {value!r}"
    templates: dict[str, str] = {
        "missing": "is required",
        "extra_forbidden": "is not a known field; remove it or check its spelling",
        "greater_than_equal": f"must be >= {ctx.get('ge')}{got}",
        "greater_than": f"must be > {ctx.get('gt')}{got}",
        "less_than_equal": f"must be <= {ctx.get('le')}{got}",
        "less_than": f"must be < {ctx.get('lt')}{got}",
        "literal_error": f"must be {ctx.get('expected')}{got}",
        "int_parsing": f"must be an integer{got}",
        "int_type": f"must be an integer{got}",
        "int_from_float": f"must be a whole number{got}",
        "float_parsing": f"must be a number{got}",
        "bool_parsing": f"must be true or false{got}",
        "string_type": f"must be a string{got}",
        "dict_type": f"must be a mapping{got}",
        "list_type": f"must be a list{got}",
        "model_type": f"must be a mapping{got}",
        "too_short": f"must have at least {ctx.get('min_length')} item(s){got}",
        "string_too_short": f"must not be empty{got}",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters{got}",
        "string_pattern_mismatch": f"must be lower-case letters, digits and '-', "
        f"starting and ending with a letter or digit{got}",
    }
    if kind == "literal_error" and error["loc"][:1] == ("apiVersion",):
        return f"must be {API_VERSION!r}{got}"
    if kind in templates:
        return templates[kind]
    message: str = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]
