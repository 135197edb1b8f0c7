"""What events measure, in the same per-slot tables as the workers (see `table`): published events (by the
publishing service and type), handler attempts (by service, type and outcome), retries and dead letters,
and the handlers' durations. Consumer lag is read from the store at scrape time (`lag` in `scrape`).

Event types are not known before they are published, so each (process kind, service, type) has a table of
its own, made on first use, and each table has a `.layout` file next to it describing its families: the
scrape reads every `events_*` table through its description, without importing any handler module.

Only processes that `microkit up` gave a slot (workers: MICROKIT_WORKER_SLOT; consumers:
MICROKIT_CONSUMER_SLOT) count; a script or `microkit events publish` does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from microkit.metrics import folder
from microkit.metrics.table import Family, Layout, SlotTable

PUBLISHED = "microkit_events_published_total"
HANDLED = "microkit_events_handled_total"
RETRIED = "microkit_events_retried_total"
DEAD = "microkit_events_dead_lettered_total"
DURATION = "microkit_events_handler_duration_seconds"
LAG = "microkit_events_consumer_lag"
PENDING = "microkit_events_pending"
OUTCOMES = ("ok", "error")
PREFIX = "events_"
WORKER_SLOT = "MICROKIT_WORKER_SLOT"
CONSUMER_SLOT = "MICROKIT_CONSUMER_SLOT"
ROOT = "MICROKIT_METRICS_ROOT"


def published_layout(service: str, event_type: str) -> Layout:
    return Layout((Family(PUBLISHED, "counter", "Events published (stored), by publishing service and type.",
                          ("service", "type"), ((service, event_type),)),))


def handled_layout(service: str, event_type: str) -> Layout:
    key = (service, event_type)
    by = ("service", "type")
    return Layout((
        Family(HANDLED, "counter", "Handler attempts of a service's consumers, by type and outcome (ok: returned, "
               "error: raised).", (*by, "outcome"), tuple((*key, o) for o in OUTCOMES)),
        Family(RETRIED, "counter", "Handler attempts that raised and were tried again.", by, (key,)),
        Family(DEAD, "counter", "Events sent to the dead letters (every retry failed, or delivered too often "
               "without an ack).", by, (key,)),
        Family(DURATION, "histogram", "Time a handler attempt took, in seconds.", by, (key,)),
    ))


def describe(layout: Layout) -> str:
    return json.dumps([{"name": f.name, "kind": f.kind, "help": f.help, "labels": f.labels, "series": f.series,
                        "buckets": f.buckets} for f in layout.families])


def described(text: str) -> Layout:
    """The layout a `.layout` file describes."""
    return Layout(Family(d["name"], d["kind"], d["help"], tuple(d["labels"]), tuple(tuple(s) for s in d["series"]),
                         tuple(d["buckets"])) for d in json.loads(text))


def open_table(root: Path, name: str, layout: Layout, slot: int) -> SlotTable:
    """This process's row in table `name` (a file per supervisor), with its description written once."""
    table = SlotTable(folder(root), name, layout, slot)
    sidecar = table.path.with_suffix(".layout")
    if not sidecar.exists():
        scratch = sidecar.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(describe(layout))
        os.replace(scratch, sidecar)
    return table


class EventMeter:
    """This process's event tables; `None` cells when the process has no slot or no writable folder."""

    def __init__(self) -> None:
        self.pid = 0
        self.slot = 0
        self.kind = ""
        self.root = Path(".")
        self.published_cells: dict[tuple[str, str], tuple[SlotTable, int] | None] = {}
        self.handled_tables: dict[tuple[str, str], "Handled | None"] = {}

    def _ready(self) -> bool:
        if self.pid != os.getpid():  # after a fork: tables of our own
            self.pid = os.getpid()
            self.published_cells, self.handled_tables = {}, {}
            consumer, worker = os.environ.get(CONSUMER_SLOT), os.environ.get(WORKER_SLOT)
            self.kind, slot = ("c", consumer) if consumer else ("w", worker)
            self.slot = int(slot) if slot and slot.isdigit() else 0
            self.root = Path(os.environ.get(ROOT) or os.getcwd())  # workers and consumers run in the project root
        return self.slot > 0

    def _open(self, name: str, layout: Layout) -> SlotTable | None:
        try:
            return open_table(self.root, name, layout, self.slot)
        except OSError:
            return None

    def published(self, service: str, event_type: str) -> None:
        if not self._ready():
            return
        key = (service, event_type)
        found = self.published_cells.get(key, False)
        if found is False:
            layout = published_layout(service or "-", event_type)
            table = self._open(f"{PREFIX}{self.kind}p_{service or 'none'}", layout)
            found = None if table is None else (table, layout.offset(PUBLISHED, service or "-", event_type))
            self.published_cells[key] = found
        if found is not None:
            found[0].cells[found[1]] += 1.0

    def handled(self, service: str, event_type: str) -> "Handled | None":
        """The cells of one handler (None when not metered)."""
        if not self._ready():
            return None
        key = (service, event_type)
        if key not in self.handled_tables:
            layout = handled_layout(service, event_type)
            table = self._open(f"{PREFIX}h_{service}", layout)
            self.handled_tables[key] = None if table is None else Handled(table, layout, key)
        return self.handled_tables[key]


class Handled:
    __slots__ = ("table", "ok", "error", "retried", "dead", "duration", "buckets")

    def __init__(self, table: SlotTable, layout: Layout, key: tuple[str, str]) -> None:
        self.table = table
        self.ok = layout.offset(HANDLED, *key, "ok")
        self.error = layout.offset(HANDLED, *key, "error")
        self.retried = layout.offset(RETRIED, *key)
        self.dead = layout.offset(DEAD, *key)
        self.duration = layout.offset(DURATION, *key)
        self.buckets = layout.families[3].buckets

    def attempt(self, ok: bool, seconds: float) -> None:
        self.table.cells[self.ok if ok else self.error] += 1.0
        self.table.observe(self.duration, self.buckets, seconds)

    def count(self, offset: int) -> None:
        self.table.cells[offset] += 1.0


_meter = EventMeter()
published = _meter.published
handled = _meter.handled


_described: dict[str, Layout | None] = {}


def tables_of(root: Path) -> list[tuple[Layout, list[float]]]:
    """Every event table of this host, through its description, added up per layout."""
    from microkit.metrics.table import read_totals, tables

    summed: dict[str, tuple[Layout, list[float]]] = {}
    for service, path in tables(folder(root)):
        if not service.startswith(PREFIX):
            continue
        layout = _described.get(path.name, False)
        if layout is False:
            try:
                layout = described(path.with_suffix(".layout").read_text())
            except (OSError, ValueError, KeyError, TypeError):
                layout = None  # not written yet: the next scrape reads it
            if layout is not None:
                _described[path.name] = layout
        if layout is None:
            continue
        read = read_totals(path, layout)
        if read is None:
            continue
        key = f"{service}-{layout.digest}"
        if key in summed:
            summed[key] = (layout, [a + b for a, b in zip(summed[key][1], read[0])])
        else:
            summed[key] = (layout, read[0])
    return list(summed.values())
