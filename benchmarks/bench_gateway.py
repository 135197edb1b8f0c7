"""The gateway against nginx: 1 worker each, proxying to the same backend, measured in alternation.

Run from the repository root: `python benchmarks/bench_gateway.py [--duration 5] [--rounds 3]`.
One backend (the tiny Bottle JSON app on microkit's engine, 1 process) sits behind both proxies:
Debian's nginx (1 worker, upstream keepalive, a config generated in a temp folder) and the microkit
gateway (1 worker). wrk drives them in turn, nginx/gateway, nginx/gateway, ...; then a paced
client measures the latency each proxy adds at a fixed moderate rate (its p50 minus the backend's
own p50, the backend being asked directly in the same alternation). Every subprocess is stopped on
exit; every run is bounded.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_worker import (  # noqa: E402
    APP, HOST, _ms, _spawn, bench_project, free_port, run_worker_process, stop, wait_ready,
)

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream backend {{
        server {host}:{backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {host}:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-ID $request_id;
            add_header X-Request-ID $request_id;
        }}
    }}
}}
"""

GATEWAY_TOML = """
[project]
name = "bench"
root = "{root}"
[gateway]
listen = "{host}:{port}"
workers = 1
access_log = {access_log}
[services.bench]
app = "benchmarks.app:app"
route = "/"
"""


Launcher = Callable[[Path, int, int, bool], subprocess.Popen]
BACKEND_PROJECT = Path(tempfile.mkdtemp(prefix="microkit-bench-gateway-"))
atexit.register(shutil.rmtree, BACKEND_PROJECT, True)
_PROCS: list[subprocess.Popen] = []


def _stop_all() -> None:
    """Stop every subprocess this script started (also run at exit)."""
    while _PROCS:
        stop(_PROCS.pop())


def run_gateway(tmp: Path, port: int, backend: int, access_log: bool) -> subprocess.Popen:
    """Start the real `microkit gateway` (1 worker) of the backend's project (BACKEND_PROJECT): it finds
    the backend's instance in that project's registry and routes `/` to it."""
    conf = tmp / "microkit.toml"
    conf.write_text(GATEWAY_TOML.format(root=BACKEND_PROJECT, host=HOST, port=port,
                                        access_log=str(access_log).lower()))
    microkit = str(Path(sys.executable).with_name("microkit"))
    return _spawn([microkit, "gateway", "-c", str(conf)])


def run_nginx(tmp: Path, port: int, backend: int, access_log: bool) -> subprocess.Popen:
    """Start Debian's nginx (1 worker, upstream keepalive 64) with every path inside `tmp`."""
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, host=HOST, port=port, backend=backend,
                                      access_log=f"{tmp}/access.log" if access_log else "off"))
    return _spawn(["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children (nginx's worker is a child), from /proc."""
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        total += sum(int(f) for f in fields[11:13])
    return total / os.sysconf("SC_CLK_TCK")


def wrk(port: int, duration: int, connections: int) -> tuple[float, float, float, int]:
    """Drive a server with wrk; return (req/s, p50 ms, p99 ms, requests)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", f"http://{HOST}:{port}/"],
        capture_output=True, text=True, timeout=duration + 30, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning on port {port}: {out.strip().splitlines()[-3:]}", file=sys.stderr)
    return rps, p50, p99, requests


def _read_response(sock: socket.socket, buf: bytearray) -> None:
    """Read one Content-Length framed response (the benchmark app's) from a keep-alive socket."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a response")
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", bytes(buf[:end]), re.I)
    if match is None:
        raise ConnectionError("response without Content-Length")
    total = end + int(match.group(1))
    while len(buf) < total:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed inside a response body")
        buf += data
    del buf[:total]


def paced_latencies(port: int, rate: int, seconds: float) -> list[float]:
    """One keep-alive connection, one request every 1/rate s (sequential): each request's latency in ms."""
    request = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    buf = bytearray()
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(20):
            sock.sendall(request)
            _read_response(sock, buf)
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            pause = start + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            sent = time.perf_counter()
            sock.sendall(request)
            _read_response(sock, buf)
            latencies.append((time.perf_counter() - sent) * 1000)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> int:
    """Start backend, nginx and gateway; alternate wrk runs, then paced runs; print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per proxy (alternating)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=int, default=1000, help="paced requests per second for the added latency")
    parser.add_argument("--paced-seconds", type=float, default=2.0, help="seconds per paced run")
    parser.add_argument("--access-log", action="store_true", help="access logs on in both proxies (default: off)")
    parser.add_argument("--gateway-only", action="store_true", help="skip nginx (for profiling the gateway)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: install it (apt-get install wrk) to run this benchmark", file=sys.stderr)
        return 1
    launchers: dict[str, Launcher] = {"nginx": run_nginx, "gateway": run_gateway}
    if args.gateway_only:
        del launchers["nginx"]
    elif not shutil.which("nginx"):
        print("nginx not found: skipping the nginx side (apt-get install nginx to compare)", file=sys.stderr)
        del launchers["nginx"]

    atexit.register(_stop_all)
    tmp_root = Path(tempfile.mkdtemp(prefix="microkit-bench-"))
    atexit.register(shutil.rmtree, tmp_root, True)
    try:
        backend_port = free_port()
        backend = run_worker_process(APP, HOST, backend_port, bench_project(BACKEND_PROJECT))
        _PROCS.append(backend)
        wait_ready(backend_port, backend)
        procs: dict[str, tuple[subprocess.Popen, int]] = {}
        for name, launch in launchers.items():
            tmp = tmp_root / name
            tmp.mkdir()
            tmp.chmod(0o755)
            port = free_port()
            proc = launch(tmp, port, backend_port, args.access_log)
            _PROCS.append(proc)
            procs[name] = (proc, port)
        for proc, port in procs.values():
            wait_ready(port, proc)
        time.sleep(0.5)

        runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in procs}
        for round_ in range(args.rounds):
            for name, (proc, port) in procs.items():
                before = cpu_seconds(proc.pid)
                rps, p50, p99, requests = wrk(port, args.duration, args.connections)
                cpu_us = (cpu_seconds(proc.pid) - before) / max(requests, 1) * 1e6
                runs[name].append((rps, p50, p99, cpu_us))
                print(f"round {round_ + 1} {name:8s} {rps:9.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                      f"{cpu_us:5.0f} us CPU/req", file=sys.stderr)

        targets = {"direct": backend_port, **{name: port for name, (_, port) in procs.items()}}
        p50s: dict[str, list[float]] = {name: [] for name in targets}
        p99s: dict[str, list[float]] = {name: [] for name in targets}
        for round_ in range(args.rounds):
            for name, port in targets.items():
                latencies = paced_latencies(port, args.rate, args.paced_seconds)
                p50s[name].append(percentile(latencies, 0.5))
                p99s[name].append(percentile(latencies, 0.99))
                print(f"paced {round_ + 1} {name:8s} p50 {p50s[name][-1]:6.3f} ms  p99 {p99s[name][-1]:6.3f} ms",
                      file=sys.stderr)
    finally:
        _stop_all()

    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, median of {args.rounds} alternating runs, "
          f"1 worker each, access logs {'on' if args.access_log else 'off'}")
    print(f"{'proxy':10s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU us/req':>11s}")
    for name, rows in runs.items():
        med = [statistics.median(row[i] for row in rows) for i in range(4)]
        print(f"{name:10s} {med[0]:9.0f} {med[1]:8.2f} {med[2]:8.2f} {med[3]:11.0f}")
    if "nginx" in runs:
        ratio = statistics.median(g[0] / n[0] for g, n in zip(runs["gateway"], runs["nginx"]))
        print(f"gateway / nginx req/s, median of per-round ratios: {ratio:.2f}x (target >= 0.7x)")
    print(f"\nadded latency at {args.rate} req/s (one sequential keep-alive client), medians of {args.rounds} runs:")
    direct50, direct99 = statistics.median(p50s["direct"]), statistics.median(p99s["direct"])
    print(f"{'direct':10s} p50 {direct50:6.3f} ms  p99 {direct99:6.3f} ms")
    for name in procs:
        p50, p99 = statistics.median(p50s[name]), statistics.median(p99s[name])
        print(f"{name:10s} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  added at p50 {p50 - direct50:+.3f} ms"
              + ("  (target <= 1 ms)" if name == "gateway" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
