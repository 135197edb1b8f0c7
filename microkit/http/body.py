"""wsgi.input: the de-chunked request body, pulled from the connection only when the app reads it."""

from collections.abc import Callable, Iterator

from microkit.http.errors import HTTPError


class Input:
    """A file-like request body that the parser fills and the app drains; it reads ahead of the app only
    when the engine asks (`prefetch`, for short chunked bodies)."""

    __slots__ = ("_buf", "_fill", "_before_read", "_limit", "_received", "done", "error")

    def __init__(
        self,
        fill: Callable[[], None] | None,
        limit: int | None = None,
        before_read: Callable[[], None] | None = None,
    ) -> None:
        self._buf = bytearray()
        self._fill = fill
        self._before_read = before_read
        self._limit = limit
        self._received = 0
        self.done = fill is None
        self.error: HTTPError | None = None

    @property
    def awaiting_continue(self) -> bool:
        """True while the client waits for `100 Continue` that was never sent."""
        return self._before_read is not None

    def feed(self, data: bytes) -> None:
        """Append body bytes from the parser, refusing more than the body limit."""
        self._received += len(data)
        if self._limit is not None and self._received > self._limit:
            raise HTTPError(413)
        self._buf += data

    def _pull(self) -> bool:
        """Read more of the body from the connection; False once the body is complete."""
        if self.error is not None:
            raise self.error
        if self.done:
            return False
        if self._before_read is not None:
            before_read, self._before_read = self._before_read, None
            before_read()
        try:
            self._fill()
        except HTTPError as exc:
            self.error = exc
            raise
        if self.error is not None:
            raise self.error
        return True

    def _take(self, size: int) -> bytes:
        """Remove and return the first `size` buffered bytes."""
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Return `size` bytes (fewer only at the end of the body), or the rest of the body."""
        if size is None or size < 0:
            while self._pull():
                pass
            return self._take(len(self._buf))
        while len(self._buf) < size and self._pull():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        """Return one line including its newline, at most `size` bytes when given."""
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            start = len(self._buf)
            if (size is not None and 0 <= size <= start) or not self._pull():
                end = start
                break
        if size is not None and 0 <= size < end:
            end = size
        return self._take(end)

    def readlines(self, hint: int = -1) -> list[bytes]:
        """Return the remaining lines, stopping once `hint` bytes were collected when given."""
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        """Yield the body line by line."""
        while line := self.readline():
            yield line

    @property
    def buffered(self) -> int:
        """How many body bytes are read from the connection and not yet by the app."""
        return len(self._buf)

    def prefetch(self, limit: int) -> bool:
        """Read ahead until the body is complete (True) or more than `limit` bytes are buffered (False)."""
        while len(self._buf) <= limit and self._pull():
            pass
        return self.done and len(self._buf) <= limit

    def discard(self, limit: int) -> bool:
        """Drop the unread rest of the body; False if it is longer than `limit` or broken."""
        dropped = 0
        while True:
            dropped += len(self._buf)
            self._buf.clear()
            if self.error is not None or dropped > limit:
                return False
            if self.done:
                return True
            self._fill()


EMPTY = Input(None)
