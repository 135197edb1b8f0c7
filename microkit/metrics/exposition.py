"""The Prometheus text format (version 0.0.4) for the families of a `Layout`, and for figures computed
at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from microkit.metrics.table import Family, Layout

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def _head(family: Family) -> list[str]:
    return [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]


def render_tables(tables: Sequence[tuple[Layout, Sequence[float]]]) -> list[str]:
    """The lines of every family of the layouts, from their added-up cells; layouts with the same
    families (one per service) share one HELP and TYPE per family."""
    lines: list[str] = []
    done: set[str] = set()
    for layout, _ in tables:
        for family in layout.families:
            if family.name in done:
                continue
            done.add(family.name)
            lines += _head(family)
            for other, totals in tables:
                for same in other.families:
                    if same.name == family.name:
                        lines += _series(other, same, totals)
    return lines


def _series(layout: Layout, family: Family, totals: Sequence[float]) -> list[str]:
    lines = []
    for values in family.series:
        offset = layout.offsets[(family.name, values)]
        if family.kind != "histogram":
            lines.append(f"{family.name}{_labels(family.labels, values)} {_number(totals[offset])}")
            continue
        running = 0.0
        for index, bound in enumerate((*family.buckets, float("inf"))):
            running += totals[offset + index]
            le = 'le="%s"' % _number(bound)
            lines.append(f"{family.name}_bucket{_labels(family.labels, values, le)} {_number(running)}")
        end = offset + len(family.buckets) + 1
        lines.append(f"{family.name}_sum{_labels(family.labels, values)} {_number(totals[end])}")
        lines.append(f"{family.name}_count{_labels(family.labels, values)} {_number(totals[end + 1])}")
    return lines


def render_values(family: Family, values: Mapping[tuple[str, ...], float]) -> list[str]:
    """The lines of a counter or gauge whose figures were computed now."""
    lines = _head(family)
    for labels, value in values.items():
        lines.append(f"{family.name}{_labels(family.labels, labels)} {_number(value)}")
    return lines


def document(parts: Iterable[list[str]]) -> bytes:
    return ("\n".join(line for part in parts for line in part) + "\n").encode()
