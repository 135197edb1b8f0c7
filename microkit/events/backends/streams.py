"""Events in Redis Streams.

Keys, for namespace `ns`: `ns:events:{type}` (a stream per type, trimmed to about MAX_LEN entries),
`ns:replay:{group}` (dead letters sent back to one group), `ns:dead` (the dead letters, a stream with
the event, its error, service and group), `ns:once:{key}` (ids handled, with a TTL), `ns:lease:{name}`
(the singleton leader). Consumer groups are the subscription groups; entries stay pending with their
consumer until XACK, and XAUTOCLAIM hands those of a dead consumer to a live one.

An event whose XADD returned is in Redis's memory: it survives a Redis restart only as far as Redis
persists it (appendonly with appendfsync always for every write; the default everysec can lose ~1 s).
"""

from __future__ import annotations


import time

from microkit.events.backends.base import DeadLetter
from microkit.events.backends.log import Entry, LogBackend, LogStore
from microkit.events.envelope import Event
from microkit.storage import redacted, redis_client, unavailable

MAX_LEN = 1_000_000
READ_SOCKET_TIMEOUT = 5.0


class RedisStreamsBackend(LogBackend):
    def make_store(self) -> RedisLogStore:
        return RedisLogStore(self.url, self.namespace, self.publish_timeout)


class RedisLogStore(LogStore):
    def __init__(self, url: str, namespace: str, publish_timeout: float) -> None:
        self.url = url
        self.ns = namespace
        self.what = f"events store {redacted(url)}"
        self.writer = redis_client(url, socket_timeout=min(max(publish_timeout, 0.2), 2.0), retries=1)
        self.reader = redis_client(url, socket_timeout=READ_SOCKET_TIMEOUT, retries=1)

    def close(self) -> None:
        self.writer.close()
        self.reader.close()

    def key(self, stream: str) -> str:
        return f"{self.ns}:{stream}"

    def add(self, stream: str, body: bytes) -> None:
        with unavailable(self.what):
            self.writer.xadd(self.key(stream), {"e": body}, maxlen=MAX_LEN, approximate=True)

    def lag(self) -> list[tuple[str, str, int | None, int]]:
        """XINFO GROUPS of each type's stream (lag is None where Redis cannot tell it, after a trim)."""
        prefix = self.key("events:")
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        with unavailable(self.what):
            keys = sorted(self.writer.scan_iter(match=pattern, count=1000, _type="stream"))
            pipe = self.writer.pipeline(transaction=False)
            for key in keys:
                pipe.xinfo_groups(key)
            found = []
            for key, groups in zip(keys, pipe.execute()):
                stream = key.decode()[len(self.ns) + 1:]
                for info in groups:
                    found.append((info["name"].decode(), stream, info.get("lag"), int(info["pending"])))
        return found

    def ensure_group(self, group: str, streams: list[str]) -> None:
        import redis

        with unavailable(self.what):
            for stream in streams:
                try:
                    self.reader.xgroup_create(self.key(stream), group, id="0" if stream.startswith("replay:") else "$",
                                              mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    def read(self, group: str, consumer: str, streams: list[str], count: int, block: float, *,
             own: bool = False) -> list[Entry]:
        with unavailable(self.what):
            reply = self.reader.xreadgroup(group, consumer, {self.key(s): "0" if own else ">" for s in streams},
                                           count=count, block=None if own else int(block * 1000))
            entries = self._entries(reply)
            if own:
                self._counts(group, entries)
            return entries

    def claim(self, group: str, consumer: str, streams: list[str], min_idle: float, count: int) -> list[Entry]:
        found: list[Entry] = []
        with unavailable(self.what):
            for stream in streams:
                reply = self.reader.xautoclaim(self.key(stream), group, consumer, int(min_idle * 1000), "0-0",
                                               count=count)
                found += [Entry(stream, _text(i), (fields or {}).get(b"e")) for i, fields in reply[1]]
            self._counts(group, found)
        return found

    def touch(self, group: str, consumer: str, entries: list[Entry]) -> None:
        with unavailable(self.what):
            pipe = self.reader.pipeline(transaction=False)
            for entry in entries:
                pipe.xclaim(self.key(entry.stream), group, consumer, 0, [entry.entry_id], justid=True)
            pipe.execute()

    def ack(self, group: str, entries: list[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        with unavailable(self.what):
            if len(by_stream) == 1:
                [(stream, ids)] = by_stream.items()
                self.writer.xack(self.key(stream), group, *ids)
                return
            pipe = self.writer.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(self.key(stream), group, *ids)
            pipe.execute()

    def add_dead(self, letter: DeadLetter, stream: str) -> None:
        with unavailable(self.what):
            self.writer.xadd(self.key("dead"), {"e": letter.event.to_json(), "service": letter.service,
                                                "group": letter.group, "error": letter.error,
                                                "dead_at": repr(letter.dead_at)})

    def dead(self) -> list[tuple[str, DeadLetter]]:
        with unavailable(self.what):
            rows = self.reader.xrange(self.key("dead"))
        return [(_text(i), DeadLetter(Event.from_json(f[b"e"]), _text(f[b"service"]), _text(f[b"group"]),
                                      _text(f[b"error"]), float(f[b"dead_at"]))) for i, f in rows]

    def remove_dead(self, dead_id: str) -> None:
        with unavailable(self.what):
            self.writer.xdel(self.key("dead"), dead_id)

    def lease(self, name: str, holder: str, ttl: float) -> bool:
        key = self.key(f"lease:{name}")
        with unavailable(self.what):
            if self.writer.set(key, holder, nx=True, px=int(ttl * 1000)):
                return True
            if self.writer.get(key) == holder.encode():
                self.writer.pexpire(key, int(ttl * 1000))
                return True
            return False

    def tail(self, streams: list[str] | None, after: dict[str, str], block: float) -> list[Entry]:
        with unavailable(self.what):
            if streams is None:
                prefix = self.key("events:")
                names = [_text(k)[len(self.ns) + 1:] for k in self.reader.scan_iter(match=prefix + "*", count=1000)]
            else:
                names = streams
            for name in names:
                after.setdefault(name, "$" if block == 0 else "0-0")
            if block == 0:
                for name in names:
                    last = self.reader.xrevrange(self.key(name), count=1)
                    after[name] = _text(last[0][0]) if last else "0-0"
                return []
            if not names:
                time.sleep(block)
                return []
            reply = self.reader.xread({self.key(n): after[n] for n in names}, block=int(block * 1000))
            entries = self._entries(reply)
            for entry in entries:
                after[entry.stream] = entry.entry_id
            return entries

    def seen(self, key: str) -> bool:
        with unavailable(self.what):
            return bool(self.writer.exists(self.key(f"once:{key}")))

    def mark(self, key: str, ttl: float) -> None:
        with unavailable(self.what):
            self.writer.set(self.key(f"once:{key}"), "1", ex=max(1, int(ttl)))

    def _entries(self, reply) -> list[Entry]:
        entries: list[Entry] = []
        for stream, rows in reply or []:
            name = _text(stream)[len(self.ns) + 1:]
            entries += [Entry(name, _text(i), (fields or {}).get(b"e")) for i, fields in rows]
        return entries

    def _counts(self, group: str, entries: list[Entry]) -> None:
        """Fill in delivery counts from the pending entries list (one XPENDING per entry)."""
        if not entries:
            return
        pipe = self.reader.pipeline(transaction=False)
        for entry in entries:
            pipe.xpending_range(self.key(entry.stream), group, min=entry.entry_id, max=entry.entry_id, count=1)
        for entry, rows in zip(entries, pipe.execute()):
            if rows:
                entry.deliveries = int(rows[0]["times_delivered"])


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)



