"""Run one Lua script for many concurrent callers, sharing round trips to Redis (automatic pipelining).

A Redis round trip costs this process ~40-80 µs of CPU, mostly in the kernel (send and receive on the
socket), whatever the command. A gateway serving 50 concurrent requests would pay that for every
rate-limit check. Here the first caller becomes the leader and sends everything queued so far as one
pipeline; callers arriving meanwhile queue up and the next leader (the oldest of them, woken by the
previous one) sends them together. Each caller leads at most one batch, so nobody is stuck serving
others. With one caller at a time this is a plain EVALSHA. Works with greenlets (gevent patches the
threading primitives) and with threads alike; state is per process, rebuilt after a fork, and the client
comes from `microkit.storage.redis_client` like every other Redis user's.

Two more things keep a gateway's per-request cost down (measured through the gateway: Redis-counted
limits went from +70 to about +35 us of CPU per request against no security at all):
- a new leader yields once (`time.sleep(0)`, gevent's `sleep(0)` once patched) before sending, so every
  request that became runnable in this turn of the event loop joins the batch;
- commands are packed here (RESP bytes, ~1 us) rather than by redis-py (~5 us), and scripts that answer
  with one status line (`redis.status_reply`) are read with one line parse instead of an array's five;
- identical calls (same key and arguments) in one batch are sent once, with their number appended as
  the script's last argument; each caller gets `(reply, place)`, its place among them (0-based). So
  the script must answer for `count` identical requests made in a row (the GCRA script does), and a
  busy key costs Redis one script run per round trip, not one per request.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from microkit.storage import redis_client

if TYPE_CHECKING:
    import redis


class _Call:
    __slots__ = ("args", "result", "error", "leader", "done")

    def __init__(self, args: tuple) -> None:
        self.args = args
        self.result: Any = None
        self.error: BaseException | None = None
        self.leader = False
        self.done: threading.Event | None = None


class _ProcessState:
    def __init__(self, client: redis.Redis) -> None:
        self.pid = os.getpid()
        self.client = client
        self.lock = threading.Lock()
        self.queue: list[_Call] = []
        self.busy = False


class ScriptRunner:
    """`runner(key, *args)` runs `script` on one key: EVALSHA, and after a NOSCRIPT the script is sent again."""

    def __init__(self, url: str, script: str, *, socket_timeout: float) -> None:
        self.url = url
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self._evalsha = b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % self.sha.encode()
        self.socket_timeout = socket_timeout
        self._state: _ProcessState | None = None
        self._creating = threading.Lock()

    def __call__(self, key: str, *args: Any) -> tuple[Any, int]:
        """(the script's reply, this caller's place among identical calls); raises redis.RedisError (shared
        by the whole batch when the connection fails)."""
        state = self._process()
        call = _Call((key, *args))
        with state.lock:
            state.queue.append(call)
            if state.busy:
                call.done = threading.Event()
            else:
                state.busy = call.leader = True
        if not call.leader:
            call.done.wait()
        if call.leader:
            time.sleep(0)  # let the callers that are runnable now queue up behind this one
            self._flush(state)
        if call.error is not None:
            raise call.error
        return call.result

    def close(self) -> None:
        """Close this process's connections (queued callers of other greenlets still get answers)."""
        state, self._state = self._state, None
        if state is not None and state.pid == os.getpid():
            state.client.close()

    def _process(self) -> _ProcessState:
        state = self._state
        if state is None or state.pid != os.getpid():
            with self._creating:
                if self._state is None or self._state.pid != os.getpid():
                    self._state = _ProcessState(redis_client(self.url, socket_timeout=self.socket_timeout, retries=0))
                state = self._state
        return state

    def _flush(self, state: _ProcessState) -> None:
        """Send everything queued as one batch, answer each caller, then hand the lead to the next in line."""
        import redis

        with state.lock:
            batch, state.queue = state.queue, []
        try:
            try:
                results = self._execute(state.client, [call.args for call in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for call, result in zip(batch, results):
                if isinstance(result, Exception):
                    call.error = result
                else:
                    call.result = result
        finally:
            for call in batch:
                if call.result is None and call.error is None:
                    call.error = redis.ConnectionError("rate limit batch interrupted")
                if call.done is not None:
                    call.done.set()
            with state.lock:
                if state.queue:
                    successor = state.queue[0]
                    successor.leader = True
                    successor.done.set()
                else:
                    state.busy = False

    def _execute(self, client: redis.Redis, batch: list[tuple]) -> list[Any]:
        """Every call's reply (or its error reply), NOSCRIPT ones sent again after SCRIPT LOAD."""
        import redis

        results = self._send(client, batch)
        missing = [i for i, result in enumerate(results) if isinstance(result, redis.exceptions.NoScriptError)]
        if missing:
            client.script_load(self.script)
            for i, result in zip(missing, self._send(client, [batch[i] for i in missing])):
                results[i] = result
        return results

    def _send(self, client: redis.Redis, batch: list[tuple]) -> list[Any]:
        """One write and one read for the whole batch; a batch whose connection fails is sent once more on a
        fresh connection, which covers pooled connections broken by a Redis restart."""
        import redis

        groups: dict[tuple, list[int]] = {}
        for index, args in enumerate(batch):
            groups.setdefault(args, []).append(index)
        packed = b"".join([self._pack((*args, len(indexes))) for args, indexes in groups.items()])
        try:
            replies = self._send_once(client.connection_pool, packed, len(groups))
        except redis.ConnectionError:
            replies = self._send_once(client.connection_pool, packed, len(groups))
        results: list[Any] = [None] * len(batch)
        for indexes, reply in zip(groups.values(), replies):
            for place, index in enumerate(indexes):
                results[index] = reply if isinstance(reply, Exception) else (reply, place)
        return results

    def _pack(self, args: tuple) -> bytes:
        """`EVALSHA sha 1 key *args` in RESP (str, bytes and int arguments)."""
        parts = [b"*%d\r\n" % (3 + len(args)), self._evalsha]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(parts)

    @staticmethod
    def _send_once(pool: redis.ConnectionPool, packed: bytes, count: int) -> list[Any]:
        """Commands written at once on a pooled connection (redis-py's Pipeline object costs twice as much
        per command); error replies come back as exception objects; a failed connection is dropped."""
        import redis

        conn = pool.get_connection()
        try:
            conn.send_packed_command([packed])
            results: list[Any] = []
            for _ in range(count):
                try:
                    results.append(conn.read_response())
                except redis.ResponseError as exc:
                    results.append(exc)
            return results
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
