"""Prometheus text exposition (format 0.0.4), as TorchServe's metrics endpoint serves it.

Figures the tools and tests need from a running server (batches a model ran, each worker's thread
share) are read here, from `<metrics_address>/metrics`, never from log lines: a log line's wording
is nobody's interface, a metric's name and labels are.
"""
import math
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping

import requests

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*(?:,|$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_VALUES = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}


@dataclass(frozen=True)
class Sample:
    """One line of the exposition: `name{labels} value`."""
    name: str
    labels: Mapping[str, str]
    value: float


def _labels(text: str, line: str) -> Dict[str, str]:
    labels, position = {}, 0
    while position < len(text.rstrip()):
        match = _LABEL.match(text, position)
        if not match:
            raise ValueError(f"not a Prometheus label set at {text[position:]!r} in {line!r}")
        labels[match["name"]] = re.sub(r"\\[\\\"n]", lambda escape: _ESCAPES[escape.group()], match["value"])
        position = match.end()
    return labels


def parse(text: str) -> List[Sample]:
    """Every sample in the exposition `text`, in order; ValueError naming a line that is not one."""
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):  # HELP, TYPE and comments
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise ValueError(f"not a Prometheus sample line: {line!r}")
        samples.append(Sample(match["name"], _labels(match["labels"] or "", line), _value(match["value"], line)))
    return samples


def metric_types(text: str) -> Dict[str, str]:
    """Each metric's declared type in the exposition `text` (`# TYPE <name> <type>` lines): counter,
    gauge, histogram, summary or untyped."""
    return {parts[2]: parts[3] for parts in (line.split() for line in text.splitlines())
            if len(parts) == 4 and parts[:2] == ["#", "TYPE"]}


def _value(text: str, line: str) -> float:
    if text in _VALUES:
        return _VALUES[text]
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a Prometheus sample value: {text!r} in {line!r}") from None


def select(samples: List[Sample], name: str, **labels: str) -> List[Sample]:
    """The samples called `name` whose labels include `labels`."""
    return [sample for sample in samples
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())]


def scrape(metrics_url: str, timeout_s: float = 30) -> List[Sample]:
    """GET <metrics_url>/metrics (TorchServe's metrics listener needs no token), parsed."""
    response = requests.get(f"{metrics_url}/metrics", timeout=timeout_s)
    response.raise_for_status()
    return parse(response.text)
