"""A legacy app for the migration tests: a stdlib threaded HTTP/1.1 server on $PORT (a command service,
or started alone for a `gateway.legacy` URL).

GET /big?n=N streams N bytes; /users/ID answers {"id", "name", "created_at"} with X-Side: legacy
(and a wrong name for ID 7 when BUGGY_SIDE=legacy); /users/hang and /hang sleep; /users/drop closes the
connection unanswered; /echo returns the request's headers; everything else says which side answered.
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PIECE = b"x" * 65536
SIDE = os.environ.get("SIDE", "legacy")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: without it, 40 ms delayed-ACK stalls

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Side", SIDE)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/big":
            size = int(query["n"][0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for start in range(0, size, len(PIECE)):
                self.wfile.write(PIECE[: min(len(PIECE), size - start)])
            return
        if url.path == "/echo":
            return self.answer(200, {"side": SIDE, "path": self.path, "headers": dict(self.headers.items())})
        if url.path in ("/users/hang", "/hang"):
            time.sleep(30)
        if url.path == "/users/drop":
            self.close_connection = True
            self.connection.close()
            return
        if url.path.startswith("/users/"):
            ident = url.path.rsplit("/", 1)[1]
            name = f"user{ident}"
            if ident == "7" and os.environ.get("BUGGY_SIDE") == SIDE:
                name = "User 7"
            return self.answer(200, {"id": ident, "name": name, "created_at": time.time()})
        self.answer(200, {"side": SIDE, "path": self.path})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        data = {"side": SIDE, "path": self.path, "body": body.decode()}
        if self.headers.get("X-Microkit-Shadow"):
            data["shadow"] = self.headers["X-Microkit-Shadow"]
        self.answer(201, data)

    do_DELETE = do_GET


server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT") or sys.argv[1])), Handler)
server.daemon_threads = True
print(f"legacy server on {server.server_address[1]}", flush=True)
server.serve_forever()
