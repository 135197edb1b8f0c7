"""HTTPS at the gateway: the server's TLS context from PEM files, the socket the engine reads through,
and the plain-HTTP app that sends clients to HTTPS.

Nothing here imports gevent: the config check builds a context with the standard `ssl` module to
prove the files load, and a worker (after monkey-patching) builds the one it serves with gevent's.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Callable, Iterable

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSFileError(ValueError):
    """A certificate or key file that cannot be used; `which` is "cert" or "key"."""

    def __init__(self, which: str, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.which = which
        self.path = path
        self.reason = message


def _no_password() -> str:
    """An encrypted key must fail to load, not make OpenSSL prompt on the terminal."""
    return ""


def server_context(cert: Path, key: Path, context_class: type | None = None) -> ssl.SSLContext:
    """A server context (TLS 1.2 and up) holding the certificate chain in `cert` and the private key in
    `key` (PEM, unencrypted). TLSFileError names the file at fault.

    `context_class` defaults to `ssl.SSLContext` as it is at call time: gevent's after monkey-patching.
    (The standard class bound before patching breaks there: its property setters recurse.)"""
    for which, path in (("cert", cert), ("key", key)):
        if not Path(path).is_file():
            raise TLSFileError(which, path, "no such file")
    context = (context_class or ssl.SSLContext)(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_verify_locations(cafile=str(cert))
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise TLSFileError("cert", cert, f"not a PEM certificate ({_reason(exc)})") from None
    try:
        context.load_cert_chain(str(cert), str(key), password=_no_password)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise TLSFileError("key", key, f"not an unencrypted PEM private key for the certificate ({_reason(exc)})") \
            from None
    return context


def _reason(exc: Exception) -> str:
    """OpenSSL's reason in a few words (`KEY_VALUES_MISMATCH`), else the message."""
    return getattr(exc, "reason", None) or str(exc).strip() or type(exc).__name__


class TLSStream:
    """A gevent SSLSocket as microkit's engine reads a socket.

    The engine waits on `sock._read_event` and then reads `sock._sock` without blocking (see
    microkit/http/io.py); on a TLS socket `_sock` is the encrypted TCP socket, so here it is the
    decrypting layer instead, and a wait for readability returns at once while OpenSSL still holds
    decrypted bytes. Everything else is the SSLSocket's own.
    """

    def __init__(self, tls) -> None:
        self._tls = tls
        self._sock = _Records(tls)

    def _wait(self, watcher, *args, **kwargs):
        if watcher is self._tls._read_event and self._tls._sslobj is not None and self._tls.pending():
            return None
        return self._tls._wait(watcher, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._tls, name)


class _Records:
    """Application data: reads that never wait (BlockingIOError where OpenSSL wants the socket), and
    writes that complete."""

    def __init__(self, tls) -> None:
        self._tls = tls

    def recv(self, size: int) -> bytes:
        tls = self._tls
        if tls._sslobj is None:  # shut down for writing: what follows is only read and discarded
            return tls.recv(size)
        try:
            return tls._sslobj.read(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError() from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    def send(self, data: bytes) -> int:
        """Write all of `data`, waiting cooperatively while the socket is full. Never BlockingIOError: an
        SSL_write that wants the socket must be retried with the same buffer, and the engine's
        fallback (`sendall` of the rest, in chunks of its own) would make OpenSSL fail the retry."""
        if self._tls._sslobj is None:
            raise BrokenPipeError("the TLS connection is shut down")
        return self._tls.send(data)


def redirect_to_https(https_port: int) -> Callable:
    """A WSGI app answering every request with 308 to the same host and target over HTTPS on `https_port`
    (the port is left out when it is 443), closing the connection afterwards."""
    suffix = "" if https_port == 443 else f":{https_port}"

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        given = environ.get("HTTP_HOST")
        server = environ["SERVER_NAME"]
        host = _hostname(given) if given else (f"[{server}]" if ":" in server else server)
        target = environ.get("RAW_URI") or "/"
        if not target.startswith("/"):  # absolute-form (http://host/path) or "*"
            _, sep, rest = target.partition("://")
            target = "/" + rest.partition("/")[2] if sep else "/"
        location = f"https://{host}{suffix}{target}"
        body = f"Moved to {location}\n".encode("latin-1", "replace")
        start_response("308 Permanent Redirect", [
            ("Location", location), ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
            ("Connection", "close")])
        return [body]

    return application


def _hostname(host: str) -> str:
    """A Host header without its port (IPv6 literals keep their brackets)."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host
