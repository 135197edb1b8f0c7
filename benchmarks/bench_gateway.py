"""The gateway beside nginx, HAProxy and Caddy: 1 worker or thread each, in front of a bjoern backend.

Run from the repository root: `python benchmarks/bench_gateway.py [--duration 5] [--rounds 3]`.
The backend is a plain WSGI callable on bjoern (C, one process; benchmarks/backend.py), run by
`microkit up --no-gateway` as a command service so that it is registered where the gateway looks;
it serves several times what any proxy passes on, and its direct req/s is printed beside theirs.
The proxies: Debian's nginx (worker_processes 1), HAProxy (nbthread 1), Caddy (GOMAXPROCS=1), each
with keep-alive to the backend and a config generated in a temp folder, and the real
`microkit gateway` CLI (workers = 1). wrk drives direct, then each proxy in turn, round after round
(the order rotates); medians, spread (min-max), the ratios gateway/Caddy and gateway/nginx (median
of per-round ratios) and each proxy's CPU per request (user+system of its processes, from /proc).
Then a paced client measures the latency each proxy adds. Every subprocess is stopped on exit;
every run is bounded.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
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
    HOST, _ms, _spawn, bench_project, cpu_seconds, free_port, process_tree, stop, wait_ready,
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

HAPROXY_CONF = """
global
    nbthread 1
    maxconn 4096
    {log}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    http-reuse always
    option forwardfor
    {log_defaults}
frontend bench
    bind {host}:{port}
    unique-id-format %{{+X}}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request set-header X-Request-ID %[unique-id]
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-response set-header X-Request-ID %[unique-id]
    default_backend app
backend app
    server b1 {host}:{backend} maxconn 64
"""

CADDYFILE = """{{
	admin off
	auto_https off
	log {{
		level ERROR
	}}
}}
http://{host}:{port} {{
{log}	reverse_proxy {host}:{backend} {{
		header_up X-Request-ID {{http.request.uuid}}
		header_down X-Request-ID {{http.request.uuid}}
	}}
}}
"""

PROJECT_TOML = """
[project]
name = "bench"

[gateway]
listen = "{host}:{gateway}"
workers = 1
access_log = {access_log}

[services.bench]
command = "{python} -m benchmarks.backend"
route = "/"
listen = "{host}:{backend}"
access_log = false
"""

Launcher = Callable[[Path, int, int, bool], subprocess.Popen]
_PROCS: list[subprocess.Popen] = []


def _stop_all() -> None:
    """Stop every subprocess this script started (also run at exit)."""
    while _PROCS:
        stop(_PROCS.pop())


def write_project(project: Path, gateway: int, backend: int, access_log: bool) -> Path:
    """The temporary project: its one service is the bjoern backend at a fixed port; its gateway listens at `gateway`."""
    bench_project(project)
    shutil.copy(ROOT / "benchmarks" / "backend.py", project / "benchmarks" / "backend.py")
    conf = project / "microkit.toml"
    conf.write_text(PROJECT_TOML.format(host=HOST, gateway=gateway, backend=backend, python=sys.executable,
                                        access_log=str(access_log).lower()))
    return conf


def run_backend(conf: Path) -> subprocess.Popen:
    """`microkit up --no-gateway`: runs (and registers) the bjoern backend of the project."""
    return _spawn([str(Path(sys.executable).with_name("microkit")), "up", "--no-gateway", "-c", str(conf)])


def run_gateway(conf: Path) -> subprocess.Popen:
    """The real `microkit gateway` CLI (1 worker) of the project: it finds the backend in the project's registry."""
    return _spawn([str(Path(sys.executable).with_name("microkit")), "gateway", "-c", str(conf)])


def run_nginx(tmp: Path, port: int, backend: int, access_log: bool) -> subprocess.Popen:
    """Debian's nginx (1 worker, upstream keepalive 64) with every path inside `tmp`."""
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, host=HOST, port=port, backend=backend,
                                      access_log=f"{tmp}/access.log" if access_log else "off"))
    return _spawn(["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)])


def run_haproxy(tmp: Path, port: int, backend: int, access_log: bool) -> subprocess.Popen:
    """HAProxy (1 thread, foreground, server connections reused) with X-Forwarded-* and X-Request-ID set."""
    conf = tmp / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(
        host=HOST, port=port, backend=backend,
        log=f"log {tmp}/haproxy.sock local0" if access_log else "",
        log_defaults="log global\n    option httplog" if access_log else ""))
    if access_log:
        _listen_unix_dgram(tmp / "haproxy.sock")
    return _spawn(["haproxy", "-db", "-f", str(conf)])


def _listen_unix_dgram(path: Path) -> None:
    """A datagram socket HAProxy can log to (it never writes files itself); the lines are dropped."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    atexit.register(sock.close)


def run_caddy(tmp: Path, port: int, backend: int, access_log: bool) -> subprocess.Popen:
    """Caddy (GOMAXPROCS=1, no admin endpoint, no automatic HTTPS); it sets X-Forwarded-* itself."""
    conf = tmp / "Caddyfile"
    conf.write_text(CADDYFILE.format(tmp=tmp, host=HOST, port=port, backend=backend,
                                     log=f"\tlog {{\n\t\toutput file {tmp}/access.log\n\t}}\n" if access_log else ""))
    env = {**os.environ, "GOMAXPROCS": "1", "HOME": str(tmp), "XDG_DATA_HOME": str(tmp / "data"),
           "XDG_CONFIG_HOME": str(tmp / "config")}
    return subprocess.Popen(["caddy", "run", "--adapter", "caddyfile", "--config", str(conf)], cwd=tmp, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL)


PROXIES: dict[str, tuple[str, Launcher]] = {
    "nginx": ("nginx", run_nginx),
    "haproxy": ("haproxy", run_haproxy),
    "caddy": ("caddy", run_caddy),
}


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


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """`median (min-max)` of a list."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def missing_tools(names: list[str]) -> list[str]:
    """Messages for what this benchmark needs and cannot find; the run stops on wrk or bjoern."""
    messages = []
    if not shutil.which("wrk"):
        messages.append("wrk not found: apt-get install wrk")
    if importlib.util.find_spec("bjoern") is None:
        messages.append(f"bjoern not installed: apt-get install libev-dev && {sys.executable} -m pip install bjoern")
    for name in names:
        if not shutil.which(PROXIES[name][0]):
            print(f"{name} not found: skipping it (apt-get install {PROXIES[name][0]})", file=sys.stderr)
    return messages


def main() -> int:
    """Start the backend, the proxies and the gateway; alternate wrk runs, then paced runs; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per target (alternating)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=int, default=1000, help="paced requests per second for the added latency")
    parser.add_argument("--paced-seconds", type=float, default=1.5, help="seconds per paced run (0: none)")
    parser.add_argument("--access-log", action="store_true", help="access logs on in every proxy (default: off)")
    parser.add_argument("--only", default="nginx,haproxy,caddy,gateway",
                        help="comma-separated targets beside direct (default: all four proxies)")
    args = parser.parse_args()
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(wanted) - {*PROXIES, "gateway"}
    if unknown:
        print(f"--only: unknown target(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    errors = missing_tools([name for name in wanted if name in PROXIES])
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    wanted = [name for name in wanted if name == "gateway" or shutil.which(PROXIES[name][0])]

    atexit.register(_stop_all)
    tmp_root = Path(tempfile.mkdtemp(prefix="microkit-bench-gateway-"))
    atexit.register(shutil.rmtree, tmp_root, True)
    backend_port, gateway_port = free_port(), free_port()
    conf = write_project(tmp_root / "project", gateway_port, backend_port, args.access_log)
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        backend = run_backend(conf)
        _PROCS.append(backend)
        wait_ready(backend_port, backend)
        procs["direct"] = (backend, backend_port)
        for name in wanted:
            if name == "gateway":
                proc, port = run_gateway(conf), gateway_port
            else:
                tmp = tmp_root / name
                tmp.mkdir()
                tmp.chmod(0o755)
                port = free_port()
                proc = PROXIES[name][1](tmp, port, backend_port, args.access_log)
            _PROCS.append(proc)
            procs[name] = (proc, port)
        for proc, port in procs.values():
            wait_ready(port, proc)
        time.sleep(0.5)
        backend_pids = process_tree(backend.pid)
        print(f"backend: bjoern, 1 process, pid {backend_pids[-1]}", file=sys.stderr)

        names = list(procs)
        runs: dict[str, list[tuple[float, float, float, float, float]]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                proc, port = procs[name]
                pids = backend_pids if name == "direct" else process_tree(proc.pid)
                before, backend_before = cpu_seconds(pids), cpu_seconds(backend_pids)
                rps, p50, p99, requests = wrk(port, args.duration, args.connections)
                cpu_us = (cpu_seconds(pids) - before) / max(requests, 1) * 1e6
                backend_us = (cpu_seconds(backend_pids) - backend_before) / max(requests, 1) * 1e6
                runs[name].append((rps, p50, p99, cpu_us, backend_us))
                print(f"round {round_ + 1} {name:8s} {rps:9.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                      f"{cpu_us:5.1f} us CPU/req (backend {backend_us:4.1f})", file=sys.stderr)

        p50s: dict[str, list[float]] = {name: [] for name in names}
        p99s: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.rounds if args.paced_seconds > 0 else 0):
            for name in names:
                latencies = paced_latencies(procs[name][1], args.rate, args.paced_seconds)
                p50s[name].append(percentile(latencies, 0.5))
                p99s[name].append(percentile(latencies, 0.99))
                print(f"paced {round_ + 1} {name:8s} p50 {p50s[name][-1]:6.3f} ms  p99 {p99s[name][-1]:6.3f} ms",
                      file=sys.stderr)
    finally:
        _stop_all()

    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} alternating rounds, median (min-max); "
          f"1 worker/thread each; backend bjoern (1 process); access logs {'on' if args.access_log else 'off'}")
    print(f"{'target':9s} {'req/s':>22s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU us/req':>18s} {'backend us/req':>15s}")
    for name, rows in runs.items():
        column = list(zip(*rows))
        label = "direct" if name == "direct" else name
        print(f"{label:9s} {spread(column[0]):>22s} {statistics.median(column[1]):8.2f} "
              f"{statistics.median(column[2]):8.2f} {spread(column[3], '{:.1f}'):>18s} "
              f"{statistics.median(column[4]):15.1f}")
    if "gateway" in runs:
        for other, target in (("caddy", 1.0), ("nginx", 0.5), ("haproxy", None)):
            if other in runs:
                ratios = [g[0] / o[0] for g, o in zip(runs["gateway"], runs[other])]
                goal = f"  (target >= {target}x)" if target else ""
                print(f"gateway / {other:7s} req/s, median of per-round ratios: {spread(ratios, '{:.2f}x')}{goal}")
    if any(p50s.values()):
        print(f"\nadded latency at {args.rate} req/s (one sequential keep-alive client), medians of {args.rounds} runs:")
        direct50 = statistics.median(p50s["direct"])
        for name in names:
            p50, p99 = statistics.median(p50s[name]), statistics.median(p99s[name])
            added = "" if name == "direct" else f"  added at p50 {p50 - direct50:+.3f} ms"
            print(f"{name:9s} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms{added}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
