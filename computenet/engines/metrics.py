"""Reading an engine's Prometheus text exposition into plain numbers and labels.

Every adapter needs the same thing from a scrape: a few series, usually added
up over their label sets (one per model, engine core or TP rank), sometimes
their labels (vLLM reports loaded LoRA adapters as label values). The parsing
lives here once so the vLLM, SGLang and sim adapters stay a table of metric names.

The gateway scrapes every replica ten times a second, so parsing must be cheap:
`prometheus_client`'s parser spends about 1.5 ms on a sim's /metrics, most of it
on histogram buckets nobody routes on. `SeriesReader` instead finds the lines of
the series asked for with one regular expression, in C, and builds samples only
for those (about 25 us for the same text). It still rejects text that is not an
exposition (an HTML error page, a truncated line) rather than read it as an idle
engine; `prometheus_client` stays the reference the tests compare against.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple, NoReturn

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*[ \t]*=[ \t]*"(?:[^"\\\n]|\\.)*"'
_LABELS = rf"\{{[ \t]*(?:{_LABEL}(?:[ \t]*,[ \t]*{_LABEL})*[ \t]*,?[ \t]*)?\}}"
_VALUE = r"[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[Ii]nf|NaN|nan)"
# A line that is not blank, a comment, or a metric name and more. Searched for in "\n" + text, so
# the regex engine jumps from line start to line start rather than read every character.
_BAD_LINE = re.compile(rf"\n(?![ \t\r]*(?:[#\n]|\Z)|{_NAME}[ \t{{])")


def _sample_lines(name: str) -> re.Pattern[str]:
    """Sample lines of the series `name` matches, searched for in "\n" + text; a line that starts
    like one but does not parse lands in group `bad`. A timestamp after the value is ignored."""
    sample = rf"[ \t]*(?P<labels>{_LABELS})?[ \t]+(?P<value>{_VALUE})(?:[ \t][^\n]*)?\r?(?=\n|\Z)"
    return re.compile(rf"\n(?P<name>{name})(?:{sample}|(?P<bad>[ \t{{][^\n]*))")


_ANY_SAMPLE = _sample_lines(_NAME)
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")


class MetricsParseError(ValueError):
    """The scraped text is not valid Prometheus exposition."""


class Sample(NamedTuple):
    """One line of the exposition: `name{labels} value` (timestamps are dropped).

    A tuple, and labels parsed only when asked for: a scrape builds a few of these
    ten times a second per replica, and only info gauges are read by their labels.
    """

    name: str  # as on the wire: `vllm:prompt_tokens_total`, `..._bucket`
    value: float
    label_text: str = ""  # `{a="b",c="d"}` as on the wire, already checked

    @property
    def labels(self) -> dict[str, str]:
        return _labels(self.label_text)


Samples = Mapping[str, Sequence[Sample]]


class SeriesReader:
    """Reads only the named series of an exposition; build one per adapter, at import.

    Names are sample names as they appear on the wire (counters keep `_total`), so
    callers look series up exactly as an engine prints them.
    """

    def __init__(self, *names: str) -> None:
        if not names:
            raise ValueError("SeriesReader needs at least one series name")
        self.names = frozenset(names)
        # A literal prefix shared by every name ("\nvllm:") lets the regex engine skip to candidates.
        prefix = _common_prefix(self.names)
        rests = sorted((name[len(prefix) :] for name in self.names), key=len, reverse=True)
        name = rf"{re.escape(prefix)}(?:{'|'.join(map(re.escape, rests))})"
        self._pattern = _sample_lines(name)

    def read(self, text: str) -> dict[str, list[Sample]]:
        """The samples of the named series present in `text`, by name, in the order they appear.

        Text with none of them must still be an exposition (an HTML page is no idle
        engine); text with them is trusted as far as their lines parse, which spares
        checking every line of every scrape.
        """
        lines = "\n" + text
        found = _collect(lines, self._pattern)
        if not found:
            _check_lines(lines)
        return found


def read_samples(text: str) -> dict[str, list[Sample]]:
    """Every sample by sample name (`vllm:prompt_tokens_total`, not the family name)."""
    lines = "\n" + text
    _check_lines(lines)
    return _collect(lines, _ANY_SAMPLE)


def sample_values(text: str) -> dict[str, list[float]]:
    """Every sample's value grouped by sample name, labels dropped."""
    return {name: [s.value for s in samples] for name, samples in read_samples(text).items()}


def sample_sums(text: str) -> dict[str, float]:
    """Samples summed by sample name over all their label sets (meant for gauges and counters)."""
    return {name: sum(values) for name, values in sample_values(text).items()}


def series(samples: Samples, *names: str) -> Sequence[Sample]:
    """The samples of the first of `names` present (later names are older spellings); empty if none."""
    for name in names:
        found = samples.get(name)
        if found:
            return found
    return ()


def total(samples: Samples, *names: str) -> float:
    """Sum of the first of `names` present over its label sets; 0 when none is."""
    return float(sum(s.value for s in series(samples, *names)))


def mean(samples: Samples, *names: str) -> float:
    """Mean of the first of `names` present: for fractions reported once per engine core or rank."""
    found = series(samples, *names)
    return float(sum(s.value for s in found)) / len(found) if found else 0.0


def latest(samples: Samples, *names: str) -> Sample | None:
    """The sample with the highest value: for info gauges whose value is the time they were set."""
    return max(series(samples, *names), key=lambda s: s.value, default=None)


def split_label(sample: Sample, label: str) -> list[str]:
    """A comma-separated label value as a list, empty items dropped (`""` -> `[]`)."""
    return [item for item in sample.labels.get(label, "").split(",") if item]


def _check_lines(lines: str) -> None:
    bad = _BAD_LINE.search(lines)
    if bad is not None:
        _fail(lines.count("\n", 0, bad.end()), lines[bad.end() :].partition("\n")[0])


def _collect(lines: str, pattern: re.Pattern[str]) -> dict[str, list[Sample]]:
    found: dict[str, list[Sample]] = {}
    for match in pattern.finditer(lines):
        name, labels, value, bad = match.group("name", "labels", "value", "bad")
        if bad is not None:
            _fail(lines.count("\n", 0, match.start() + 1), name + bad)
        found.setdefault(name, []).append(Sample(name, float(value), labels or ""))
    return found


def _common_prefix(names: frozenset[str]) -> str:
    first, last = min(names), max(names)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size]


def _fail(line: int, text: str) -> NoReturn:
    raise MetricsParseError(f"engine metrics are not Prometheus text: line {line}: {text[:80]!r}")


def _labels(text: str) -> dict[str, str]:
    if not text:
        return {}
    return {key: _unescape(value) for key, value in _LABEL_PAIR.findall(text)}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)
