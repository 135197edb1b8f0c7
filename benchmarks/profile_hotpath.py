"""Where a request's time goes in a microkit worker or gateway: instruction counts (callgrind) and samples (py-spy).

Run from the repository root:

    python benchmarks/profile_hotpath.py worker callgrind [--requests 3000] [--path /]
    python benchmarks/profile_hotpath.py worker pyspy [--duration 5]
    python benchmarks/profile_hotpath.py gateway callgrind|pyspy|strace

One server process is started the way a worker serves (monkey-patching, then
`microkit.supervisor.worker.serve` on a listening socket): the Bottle app of benchmarks/app.py, or the
gateway app (`microkit.gateway.wsgi`) in front of the bjoern backend of bench_gateway.py, started and
registered by `microkit up --no-gateway`. Access logs are off.

- callgrind: the server runs under `valgrind --tool=callgrind` with instrumentation off; after a warm-up,
  instrumentation is switched on (`callgrind_control -i on`), a client makes exactly `--requests` requests
  on 50 keep-alive connections, it goes off again, and the instructions per request are printed with
  the functions (C level: the interpreter, libev, llhttp, libc) that execute most of them. Instruction
  counts repeat from run to run on a shared machine, where times do not; system calls' time inside
  the kernel is not counted.
- strace: `strace -c -f` attaches after a warm-up, for exactly `--requests` requests as under callgrind;
  printed is its table of system calls (calls and errors per kind).
- pyspy: wrk drives the server for `--duration` seconds while py-spy samples it (`--nonblocking`);
  printed are the Python functions by their share of samples, self and inclusive.
The server inherits the environment: `MICROKIT_PURE_PYTHON=1` profiles the engine's pure-Python path
instead of its compiled one. Every process started is stopped on exit; every step is bounded.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_worker import HOST, free_port, stop, wait_ready  # noqa: E402

SERVER = """
import os, signal, socket, sys
kind, port = sys.argv[1], int(sys.argv[2])
if kind.startswith("bjoern"):
    import bjoern
    from benchmarks.app import app as bottle_app
    from benchmarks.backend import app as plain_app
    bjoern.run(bottle_app if kind == "bjoern" else plain_app, "127.0.0.1", port)
    sys.exit(0)
from gevent import monkey; monkey.patch_all()
import gevent, gevent.event
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(1024)
if kind == "floor":
    from gevent.server import StreamServer
    from microkit.http.io import recv_when_readable
    BODY = b'{"hello": "world", "n": 1}'
    ANSWER = b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(BODY), BODY)
    def handle(sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw = sock._sock
        while recv_when_readable(sock, raw, 65536):
            raw.send(ANSWER)
    server = StreamServer(listener, handle)
    server.start()
else:
    if kind == "worker":
        from benchmarks.app import app
    elif kind == "raw":
        from benchmarks.backend import app
    else:
        from microkit.gateway.wsgi import application as app
    from microkit.supervisor.worker import serve
    server = serve(listener, app, None)
stopped = gevent.event.Event()
gevent.signal_handler(signal.SIGTERM, stopped.set)
stopped.wait()
"""

_PROCS: list[subprocess.Popen] = []


def _stop_all() -> None:
    while _PROCS:
        stop(_PROCS.pop())


def drive(port: int, path: str, requests: int, connections: int = 50, timeout: float = 600.0) -> float:
    """Make exactly `requests` GETs on `connections` keep-alive connections (each one request at a time);
    return the seconds taken. Responses must be 200 with a Content-Length."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytearray] = {}
    sent = done = 0
    started = time.monotonic()
    for _ in range(min(connections, requests)):
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        buffers[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ)
        sock.send(request)
        sent += 1
    while done < requests:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{done} of {requests} requests in {timeout}s")
        for key, _ in selector.select(1.0):
            sock = key.fileobj
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed a connection")
            buf = buffers[sock]
            buf += data
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = bytes(buf[:end])
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(f"unexpected answer {head[:40]!r}")
                length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))
                if len(buf) < end + 4 + length:
                    break
                del buf[:end + 4 + length]
                done += 1
                if sent < requests:
                    sock.send(request)
                    sent += 1
    for sock in buffers:
        sock.close()
    return time.monotonic() - started


def start_backend(tmp: Path) -> tuple[Path, int]:
    """The bjoern backend of bench_gateway.py, registered in a temp project; returns (config, gateway port)."""
    from benchmarks.bench_gateway import run_backend, write_project
    backend, gateway = free_port(), free_port()
    conf = write_project(tmp / "project", gateway, backend, False)
    proc = run_backend(conf)
    _PROCS.append(proc)
    wait_ready(backend, proc)
    time.sleep(1.0)  # registered once healthy
    return conf, gateway


def start_server(kind: str, port: int, env: dict, wrapper: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([*wrapper, sys.executable, "-c", SERVER, kind, str(port)], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _PROCS.append(proc)
    return proc


def run_callgrind(kind: str, port: int, env: dict, path: str, requests: int, tmp: Path) -> None:
    out = tmp / "callgrind.out"
    proc = start_server(kind, port, env, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                          f"--callgrind-out-file={out}"])
    wait_ready(port, proc, timeout=120)
    drive(port, path, 500)  # warm-up: imports, caches, pooled upstream connections
    subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True, timeout=60)
    seconds = drive(port, path, requests)
    subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True, timeout=60)
    stop(proc)
    _PROCS.remove(proc)
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", str(out)], capture_output=True, text=True,
                               timeout=120).stdout
    total = int(re.search(r"([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", annotated).group(1).replace(",", ""))
    print(f"{kind} {path}: {requests} requests under callgrind in {seconds:.1f} s")
    print(f"instructions per request: {total / requests:,.0f}")
    print("\nself instructions per request, top functions:")
    rows = re.findall(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S.*)$", annotated, re.M)
    for count, share, name in rows[1:26]:
        print(f"{int(count.replace(',', '')) / requests:10,.0f}  {share:>5s}%  {name[:110]}")
    by_object: collections.Counter = collections.Counter()
    for line in re.findall(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*)$", annotated, re.M)[1:]:
        count, name = line
        found = re.search(r"\[([^\]]+)\]\s*$", name)
        by_object[found.group(1).rsplit("/", 1)[-1] if found else "(unknown object)"] += int(count.replace(",", ""))
    print("\nby object file:")
    for obj, count in by_object.most_common(10):
        print(f"{count / requests:10,.0f}  {100 * count / total:5.1f}%  {obj}")


def run_strace(kind: str, port: int, env: dict, path: str, requests: int, tmp: Path) -> None:
    out = tmp / "strace.txt"
    proc = start_server(kind, port, env, [])
    wait_ready(port, proc)
    drive(port, path, 500)  # warm-up: imports, caches, pooled upstream connections
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(proc.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    seconds = drive(port, path, requests)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    print(f"{kind} {path}: {requests} requests under strace in {seconds:.1f} s")
    print(out.read_text())


def run_pyspy(kind: str, port: int, env: dict, path: str, duration: int, tmp: Path) -> None:
    proc = start_server(kind, port, env, [])
    wait_ready(port, proc)
    subprocess.run(["wrk", "-t1", "-c50", "-d1s", f"http://{HOST}:{port}{path}"], capture_output=True, timeout=30)
    raw = tmp / "pyspy.txt"
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking", "-r", "1000",
                            "-d", str(duration), "-f", "raw", "-o", str(raw), "--pid", str(proc.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = subprocess.run(["wrk", "-t1", "-c50", f"-d{duration}s", f"http://{HOST}:{port}{path}"],
                          capture_output=True, text=True, timeout=duration + 30).stdout
    spy.wait(duration + 30)
    print(f"{kind} {path}: " + re.search(r"Requests/sec:\s+\S+", load).group(0) + " under py-spy")
    self_samples: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r" \((\S+?):\d+\)$", lambda m: f" ({m.group(1).split('site-packages/')[-1]})", f)
                  for f in stack.split(";")]
        n = int(count)
        total += n
        self_samples[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples (idle ones included: the hub waiting in epoll is `run (gevent/hub.py)`)")
    print("\nself, top functions:")
    for frame, n in self_samples.most_common(25):
        print(f"{100 * n / total:5.1f}%  {frame[:120]}")
    print("\ninclusive, top functions:")
    for frame, n in inclusive.most_common(30):
        print(f"{100 * n / total:5.1f}%  {frame[:120]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("worker", "raw", "floor", "gateway", "bjoern", "bjoern-raw"),
                        help="worker: the Bottle app; raw: a plain WSGI callable on the same engine; floor: gevent "
                             "alone (a canned answer per read, no parsing: what any gevent server pays); gateway; "
                             "bjoern, bjoern-raw: the Bottle app or the plain callable on bjoern, for reference")
    parser.add_argument("tool", choices=("callgrind", "pyspy", "strace"))
    parser.add_argument("--requests", type=int, default=3000, help="requests counted under callgrind or strace")
    parser.add_argument("--duration", type=int, default=5, help="seconds sampled by py-spy")
    parser.add_argument("--path", default="/", help="path requested (worker: /, /wait, /pg)")
    args = parser.parse_args()
    needed = {"callgrind": ["valgrind", "callgrind_control", "callgrind_annotate"], "pyspy": ["wrk"],
              "strace": ["strace"]}[args.tool]
    missing = [tool for tool in needed if not shutil.which(tool)]
    if args.tool == "pyspy" and not Path(sys.executable).with_name("py-spy").exists():
        missing.append(f"py-spy ({sys.executable} -m pip install py-spy)")
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install valgrind wrk strace)", file=sys.stderr)
        return 1
    atexit.register(_stop_all)
    tmp = Path(tempfile.mkdtemp(prefix="microkit-profile-"))
    atexit.register(shutil.rmtree, tmp, True)
    env = {**os.environ, "MICROKIT_ACCESS_LOG": "0", "PYTHONPATH": str(ROOT)}
    if args.kind == "gateway":
        conf, port = start_backend(tmp)
        env["MICROKIT_CONFIG"] = str(conf)
    else:
        port = free_port()
    try:
        if args.tool == "callgrind":
            run_callgrind(args.kind, port, env, args.path, args.requests, tmp)
        elif args.tool == "strace":
            run_strace(args.kind, port, env, args.path, args.requests, tmp)
        else:
            run_pyspy(args.kind, port, env, args.path, args.duration, tmp)
    finally:
        _stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
