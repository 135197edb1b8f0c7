"""Processes for the gateway tests: an echo backend and a gateway with a fixed instance list.

    python gateway_harness.py backend PORT NAME
    python gateway_harness.py backlogbackend PORT   (never accepts: closes its listener once a
                                                    connection waits in its backlog, as a killed
                                                    process's sockets close)
    python gateway_harness.py gateway PORT CONFIG_FILE SERVICE=HOST:PORT ...

Both run on microkit's HTTP engine under gevent, as real workers do.
"""

from gevent import monkey

monkey.patch_all()

import hashlib  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from microkit.http import HTTPServer, Limits  # noqa: E402

SEEN: list[dict] = []


def backend(name: str):
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
        if path.endswith("/slow"):
            gevent.sleep(float(query.get("s", "1")))
        if path.endswith("/big"):
            size, piece = int(query["n"]), b"x" * 65536
            start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
            return (piece[: min(65536, size - i)] for i in range(0, size, 65536))
        if path.endswith("/stream"):
            start_response("200 OK", [("Content-Type", "text/plain")])  # no length: the engine chunks it
            return (b"piece%d;" % i for i in range(int(query.get("n", "3"))))
        if path.endswith("/seen"):
            body = json.dumps(SEEN).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        digest, count = hashlib.sha256(), 0
        while True:
            chunk = environ["wsgi.input"].read(65536)
            if not chunk:
                break
            digest.update(chunk)
            count += len(chunk)
        record = {"backend": name, "method": environ["REQUEST_METHOD"], "uri": environ["RAW_URI"],
                  "headers": {k[5:]: v for k, v in environ.items() if k.startswith("HTTP_")},
                  "content_length": environ.get("CONTENT_LENGTH", ""), "body_bytes": count,
                  "body_sha256": digest.hexdigest()}
        SEEN.append(record)
        status = "500 Internal Server Error" if path.endswith("/fail") else "200 OK"
        headers = [("Content-Type", "application/json"), ("Keep-Alive", "timeout=5"), ("Proxy-Secret", "x"),
                   ("Connection", "X-Internal"), ("X-Internal", "hop"), ("X-Backend", name),
                   ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
        if path.endswith("/nocontenttype"):
            headers = [("X-Backend", name)]
        body = json.dumps(record).encode()
        start_response(status, headers + [("Content-Length", str(len(body)))])
        return [body]
    return app


RAW_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Internal\r\n"
                b"X-Internal: hop\r\nKeep-Alive: timeout=5\r\nProxy-Secret: x\r\nTrailer: X-T\r\n"
                b"Upgrade: h2c\r\nX-Backend: raw\r\nContent-Length: 2\r\n\r\nok")


def raw_backend(sock: socket.socket, address) -> None:
    """Answers every request with RAW_RESPONSE: hop-by-hop headers our own engine would never send."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
        while b"\r\n\r\n" in data:
            _, _, data = data.partition(b"\r\n\r\n")
            sock.sendall(RAW_RESPONSE)


STALE_COUNT = [0]


def stale_backend(sock: socket.socket, address) -> None:
    """Answers the first request of each connection, then closes when the next one arrives, without
    answering: what a keep-alive connection the backend timed out looks like to the gateway."""
    STALE_COUNT[0] += 1
    number, data, answered = STALE_COUNT[0], b"", False
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
        if b"\r\n\r\n" in data:
            if answered:
                sock.close()
                return
            body = b"connection %d" % number
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            answered, data = True, b""


def backlog_backend(sock: socket.socket) -> None:
    """Wait for a connection in the backlog and its request's bytes, then close the listener without
    accepting: the kernel resets the waiting connection, as when a killed worker's sockets close."""
    import select

    select.select([sock], [], [])
    gevent.sleep(0.2)
    sock.close()
    print("closed", flush=True)
    gevent.sleep(3600)


def listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def gateway_app(config_file: str, instances: list[str]):
    from microkit import config
    from microkit.gateway.app import Gateway
    from microkit.registry import Instance

    conf = config.load(Path(config_file))
    gateway = Gateway(conf, access_log=lambda line: print(line, flush=True))
    snapshot: dict[str, list] = {}
    for item in instances:
        service, address = item.split("=")
        host, port = address.rsplit(":", 1)
        snapshot.setdefault(service, []).append(Instance(service, host, int(port)))
    gateway.update(snapshot)
    return gateway


def main(argv: list[str]) -> None:
    role, port = argv[0], int(argv[1])
    sock = listen(port)
    if role == "backlogbackend":
        print(f"listening {sock.getsockname()[1]}", flush=True)
        return backlog_backend(sock)
    if role in ("rawbackend", "stalebackend"):
        from gevent.server import StreamServer

        print(f"listening {sock.getsockname()[1]}", flush=True)
        StreamServer(sock, raw_backend if role == "rawbackend" else stale_backend).serve_forever()
        return
    if role == "backend":
        app = backend(argv[2])
    else:
        app = gateway_app(argv[2], argv[3:])
    print(f"listening {sock.getsockname()[1]}", flush=True)
    HTTPServer(sock, app, limits=getattr(app, "microkit_limits", None) or Limits()).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
