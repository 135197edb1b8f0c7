"""Figures of pre-forked processes, added up without files piling up: one fixed-size row per worker slot.

Each process of a group (a service's workers, the gateway's) writes its own figures, as float64 cells,
straight into its slot's row of a file mapped into memory (`SlotTable`): no lock, no system call per
update, one writer per row. A worker that replaces a dead one takes the same slot and keeps adding to
the row, so counters never go back and the dead worker's final figures stay in the total. The file
has one row per slot ever used, never one per process: after 1,000 recycles a scrape still reads the
same few rows (prometheus_client's multiprocess mode writes a file per pid instead, and its scrapes
slow down as they pile up: client_python #204, #367).

Gauges (requests in flight) describe live processes only: a row whose process is gone is left out of
gauge sums, and a new owner zeroes its row's gauges. A table belongs to one supervisor (its pid is in
the file name); the tables of a supervisor that is gone are removed by the next reader.

Layout of a file: rows of `2 + cells` float64 values: the owner pid, the time the owner took the
row, then the cells in `Layout` order.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import re
import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

ROW_HEAD = 2
CELL = 8
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_NAME = re.compile(r"^(?P<service>[A-Za-z0-9_]+)-(?P<digest>[0-9a-f]{12})-(?P<owner>\d+)\.table$")


@dataclass(frozen=True)
class Family:
    """One metric: name, kind ("counter", "gauge", "histogram"), help, label names, and label value tuples."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    series: tuple[tuple[str, ...], ...]
    buckets: tuple[float, ...] = DEFAULT_BUCKETS

    @property
    def width(self) -> int:
        """Cells per series: one, or a histogram's buckets (+Inf included), sum and count."""
        return len(self.buckets) + 3 if self.kind == "histogram" else 1


class Layout:
    """Where each series of each family lives in a row; the same families always give the same layout."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = tuple(families)
        self.offsets: dict[tuple[str, tuple[str, ...]], int] = {}
        cell = 0
        for family in self.families:
            for values in family.series:
                self.offsets[(family.name, values)] = cell
                cell += family.width
        self.cells = cell
        text = "\n".join(f"{f.name}|{f.kind}|{f.labels}|{f.series}|{f.buckets}" for f in self.families)
        self.digest = hashlib.sha1(text.encode()).hexdigest()[:12]

    def offset(self, name: str, *values: str) -> int:
        return self.offsets[(name, values)]


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SlotTable:
    """This process's row in its group's table (see the module docstring); `cells` is a float64 view
    of the row's cells, indexed by `Layout` offsets."""

    def __init__(self, folder: Path, service: str, layout: Layout, slot: int, owner: int | None = None) -> None:
        self.layout = layout
        self.slot = slot
        owner = os.getppid() if owner is None else owner
        self.owner = owner
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{service}-{layout.digest}-{owner}.table"
        row_bytes = (ROW_HEAD + layout.cells) * CELL
        start = (slot - 1) * row_bytes
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < start + row_bytes:
                    os.ftruncate(fd, start + row_bytes)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            page = mmap.ALLOCATIONGRANULARITY
            base = start - start % page
            self._map = mmap.mmap(fd, start + row_bytes - base, offset=base)
        finally:
            os.close(fd)
        view = memoryview(self._map).cast("d")
        head = (start - base) // CELL
        self.row = view[head:head + ROW_HEAD + layout.cells]
        self.cells = self.row[ROW_HEAD:]
        self.row[0] = float(os.getpid())
        self.row[1] = time.time()
        for family in layout.families:
            if family.kind == "gauge":
                for values in family.series:
                    self.cells[layout.offsets[(family.name, values)]] = 0.0

    def observe(self, offset: int, buckets: tuple[float, ...], value: float) -> None:
        """One histogram observation at the series starting at `offset`."""
        cells = self.cells
        cells[offset + bisect_left(buckets, value)] += 1.0
        cells[offset + len(buckets) + 1] += value
        cells[offset + len(buckets) + 2] += 1.0

    def release(self) -> None:
        """A clean exit: gauges back to zero (the counters stay for the next owner of the slot)."""
        for family in self.layout.families:
            if family.kind == "gauge":
                for values in family.series:
                    self.cells[self.layout.offsets[(family.name, values)]] = 0.0


def tables(folder: Path, service: str | None = None) -> Iterator[tuple[str, Path]]:
    """(service, path) of the tables in `folder` whose supervisor is alive; removes the others."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or (service is not None and match["service"] != service):
            continue
        if not pid_alive(int(match["owner"])):
            for dead in (entry.path, entry.path[:-len(".table")] + ".layout"):  # a described table's layout too
                try:
                    os.unlink(dead)
                except OSError:
                    pass
            continue
        yield match["service"], Path(entry.path)


def read_totals(path: Path, layout: Layout) -> tuple[list[float], int] | None:
    """The cells of every row of a table added up (gauges from live owners only), and how many rows;
    None when the file is not of this layout."""
    if not path.name.split("-")[-2] == layout.digest:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    width = ROW_HEAD + layout.cells
    usable = len(data) // (width * CELL) * width * CELL
    view = memoryview(data[:usable]).cast("d")
    rows = len(view) // width
    gauges = [layout.offsets[(f.name, v)] for f in layout.families if f.kind == "gauge" for v in f.series]
    totals = [0.0] * layout.cells
    for row in range(rows):
        base = row * width
        pid = int(view[base])
        if pid == 0:
            continue
        cells = view[base + ROW_HEAD:base + width].tolist()
        if gauges and not pid_alive(pid):
            for offset in gauges:
                cells[offset] = 0.0
        totals = [a + b for a, b in zip(totals, cells)]
    return totals, rows
