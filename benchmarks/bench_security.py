"""What gateway security costs: req/s with JWT auth plus a rate limit, against the same gateway without.

Run from the repository root: `python benchmarks/bench_security.py [--duration 5] [--rounds 3]`.
One backend (the tiny Bottle JSON app, 1 process) behind three gateways, 1 worker each, built from
microkit.toml files that differ only in their security:

  none        no auth, no limit (the client still sends the bearer token, so requests are the same size)
  jwt+redis   auth = "jwt" (HS256, a token reused by every request: verified once, then cached) and
              rate_limit = "1000000/s" on the registry's Redis (the real multi-host setup: one GCRA
              script per request, pipelined), so nothing is refused and every request is counted
  jwt+local   the same with the embedded registry: the in-process limiter

wrk (`-t1 -c50`) drives them in turn (none, jwt+redis, jwt+local, none, ...); printed per round and as
medians, with each secured gateway's drop against `none` as the median of per-round ratios.
Target: no more than a 25% drop. Needs wrk, and Redis at MICROKIT_BENCH_REDIS (default
redis://127.0.0.1:6379/0) for the jwt+redis column. Every subprocess is stopped on exit.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_worker import (  # noqa: E402
    APP, HOST, _spawn, cpu_seconds, free_port, process_tree, run_worker_process, stop, wait_ready,
)
from benchmarks.bench_gateway import _read_response  # noqa: E402

SECRET_ENV = "MICROKIT_BENCH_JWT_SECRET"
SECRET = "bench-secret-" + "x" * 32
REDIS = os.environ.get("MICROKIT_BENCH_REDIS", "redis://127.0.0.1:6379/0")

TOML = """
[project]
name = "{name}"
{registry}
[gateway]
listen = "{host}:{port}"
access_log = {access_log}
[gateway.auth.jwt]
algorithms = ["HS256"]
secret_env = "{secret_env}"
[services.backend]
app = "benchmarks.app:app"
route = "/"
{security}
"""
SECURED = 'auth = "jwt"\nrate_limit = "1000000/s"\nrate_limit_by = "subject"'

WORKER = """
from gevent import monkey; monkey.patch_all()
import socket, sys
from pathlib import Path
from microkit import config
from microkit.gateway.accesslog import buffered_stdout, line_writer, start_flushing
from microkit.gateway.app import Gateway
from microkit.http import HTTPServer, Limits
from microkit.registry import Instance
conf = config.load(Path(sys.argv[1]))
stream = buffered_stdout()
start_flushing(stream)
gateway = Gateway(conf, access_log=line_writer(stream))
gateway.update({"backend": [Instance("backend", sys.argv[2], int(sys.argv[3]))]})
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((conf.gateway.listen.host, conf.gateway.listen.port))
listener.listen(1024)
HTTPServer(listener, gateway, limits=Limits(max_body=None)).serve_forever()
"""

_PROCS: list[subprocess.Popen] = []


def _stop_all() -> None:
    while _PROCS:
        stop(_PROCS.pop())


def bench_token() -> str:
    import jwt
    return jwt.encode({"sub": "bench", "scope": "read", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def run_gateway(folder: Path, port: int, backend: int, *, secured: bool, redis: str | None,
                access_log: bool) -> subprocess.Popen:
    folder.mkdir()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    (folder / "microkit.toml").write_text(TOML.format(
        name=name, registry=f'[registry]\nurl = "{redis}"' if redis else "", host=HOST, port=port,
        access_log=str(access_log).lower(), secret_env=SECRET_ENV, security=SECURED if secured else ""))
    os.environ[SECRET_ENV] = SECRET
    return _spawn([sys.executable, "-c", WORKER, str(folder / "microkit.toml"), HOST, str(backend)])


def wrk(port: int, duration: int, connections: int, token: str) -> tuple[float, float, int, int]:
    """(req/s, p50 ms, requests, non-2xx) for one wrk run with the bearer token on every request."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Authorization: Bearer {token}",
         f"http://{HOST}:{port}/"], capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50_text = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)
    p50 = float(p50_text[:-2]) / 1000 if p50_text.endswith("us") else (
        float(p50_text[:-2]) if p50_text.endswith("ms") else float(p50_text[:-1]) * 1000)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p50, requests, int(bad.group(1)) if bad else 0


def gateway_ready(port: int, proc: subprocess.Popen, token: str, timeout: float = 15.0) -> None:
    """Wait until the gateway proxies an authenticated GET / with 200."""
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
                buf = bytearray()
                _read_response(sock, buf)
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gateway on port {port} not ready after {timeout}s")


def redis_up(url: str) -> bool:
    import redis
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per gateway (alternating)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--access-log", action="store_true", help="access logs on (buffered; default: off)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: install it (apt-get install wrk) to run this benchmark", file=sys.stderr)
        return 1
    variants = {"none": (False, None), "jwt+redis": (True, REDIS), "jwt+local": (True, None)}
    if not redis_up(REDIS):
        print(f"no Redis at {REDIS}: skipping jwt+redis (set MICROKIT_BENCH_REDIS)", file=sys.stderr)
        del variants["jwt+redis"]
    atexit.register(_stop_all)
    tmp = Path(tempfile.mkdtemp(prefix="microkit-bench-security-"))
    atexit.register(shutil.rmtree, tmp, True)
    token = bench_token()
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    try:
        backend_port = free_port()
        backend = run_worker_process(APP, HOST, backend_port)
        _PROCS.append(backend)
        wait_ready(backend_port, backend)
        procs = {}
        for name, (secured, redis) in variants.items():
            port = free_port()
            proc = run_gateway(tmp / name.replace("+", "_"), port, backend_port, secured=secured, redis=redis,
                               access_log=args.access_log)
            _PROCS.append(proc)
            procs[name] = (proc, port)
        for proc, port in procs.values():
            gateway_ready(port, proc, token)
        time.sleep(0.5)
        for round_ in range(args.rounds):
            for name, (proc, port) in procs.items():
                pids = process_tree(proc.pid)
                before = cpu_seconds(pids)
                rps, p50, requests, bad = wrk(port, args.duration, args.connections, token)
                cpu_us = (cpu_seconds(pids) - before) / max(requests, 1) * 1e6
                if bad:
                    print(f"  {name}: {bad} non-2xx answers (the benchmark expects none)", file=sys.stderr)
                runs[name].append((rps, p50, cpu_us))
                print(f"round {round_ + 1} {name:10s} {rps:9.0f} req/s  p50 {p50:6.2f} ms  {cpu_us:5.0f} us CPU/req",
                      file=sys.stderr)
    finally:
        _stop_all()

    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, median of {args.rounds} alternating runs, "
          f"1 gateway worker each, access logs {'on' if args.access_log else 'off'}")
    print(f"{'gateway':10s} {'req/s':>9s} {'p50 ms':>8s} {'CPU us/req':>11s} {'drop vs none':>13s}")
    for name, rows in runs.items():
        rps, p50, cpu = (statistics.median(row[i] for row in rows) for i in range(3))
        drop = "" if name == "none" else \
            f"{(1 - statistics.median(s[0] / n[0] for s, n in zip(rows, runs['none']))) * 100:12.1f}%"
        print(f"{name:10s} {rps:9.0f} {p50:8.2f} {cpu:11.0f} {drop:>13s}")
    print("target: a drop of no more than 25%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
