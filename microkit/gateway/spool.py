"""Request bodies read whole before an instance is picked, as nginx's `proxy_request_buffering on` does.

A client trickling an upload then holds no upstream connection, and a buffered body can be sent again
(the one resend of a stale pooled connection, microkit/gateway/proxy.py). Bodies up to `memory` bytes
stay in memory; a larger one goes to a temporary file that is unlinked as it is made (O_TMPFILE on
Linux), so nothing is left on disk whatever ends the request, and `close` frees it at once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from microkit.config import Config

READ_SIZE = 256 * 1024  # what one send of a spooled body reads from its file


@dataclass(frozen=True)
class Buffering:
    """How the gateway buffers request bodies: `memory` bytes in memory, then a file in `directory`
    (None: the system's temp folder); the services in `streamed` have their uploads streamed instead."""

    memory: int = 64 * 1024
    directory: str | None = None
    streamed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, config: Config) -> Buffering:
        gateway = config.gateway
        folder = gateway.body_temp_dir
        return cls(gateway.body_buffer, None if folder is None else str(config.path.parent / folder),
                   frozenset(name for name, s in config.services.items() if not s.request_buffering))

    def spool(self) -> Spool:
        return Spool(self.memory, self.directory)


class Spool:
    """One request body being buffered: `write` its pieces, then iterate it (from the start, as often as
    a resend needs); `close` drops it. `size` is the number of bytes written."""

    __slots__ = ("memory", "directory", "size", "_pieces", "_file")

    def __init__(self, memory: int, directory: str | None) -> None:
        self.memory = memory
        self.directory = directory
        self.size = 0
        self._pieces: list[bytes] = []
        self._file = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._pieces.append(data)
        if self.size > self.memory:
            self._file = tempfile.TemporaryFile(dir=self.directory)
            self._file.writelines(self._pieces)
            self._pieces = []

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def getvalue(self) -> bytes:
        """The whole body, of a spool that stayed in memory."""
        return b"".join(self._pieces)

    def __iter__(self) -> Iterator[bytes]:
        if self._file is None:
            yield from self._pieces
            return
        self._file.flush()
        fd = self._file.fileno()
        offset = 0
        while offset < self.size:
            piece = os.pread(fd, min(READ_SIZE, self.size - offset), offset)
            if not piece:
                raise OSError(f"the spooled request body ended after {offset} of {self.size} bytes")
            offset += len(piece)
            yield piece

    def close(self) -> None:
        self._pieces = []
        if self._file is not None:
            self._file.close()
            self._file = None
