"""One worker process each, side by side: microkit, gunicorn -k gevent, granian (WSGI) and bjoern.

Run from the repository root: `python benchmarks/bench_worker.py [--duration 4] [--rounds 3]`.
Each server runs the Bottle app of benchmarks/app.py as its own subprocess on loopback, and wrk (or
a bounded Python fallback) drives them in turn, round after round (the order rotates), on three
workloads: the tiny JSON route, a route waiting 5 ms, a route doing a PostgreSQL round trip. Printed:
medians with their spread, CPU per request from /proc, and the ratios of microkit to each other
server (median of per-round ratios). The microkit side is the real `microkit up --no-gateway` on a
temporary project with one service of 1 worker. A server that is not installed is skipped with a
message; so is the PostgreSQL workload when the database does not answer.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.app:app"
HOST = "127.0.0.1"

PYWSGI_WORKER = """
from gevent import monkey; monkey.patch_all()
import importlib, socket, sys
from gevent.pywsgi import WSGIServer
module, _, attr = sys.argv[1].partition(":")
app = getattr(importlib.import_module(module), attr)
class NoDelayServer(WSGIServer):
    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)
NoDelayServer((sys.argv[2], int(sys.argv[3])), app, log=None, backlog=1024).serve_forever()
"""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


PIN: dict[str, list[str]] = {"server": [], "load": []}  # `taskset -c CPU` prefixes, set by --pin


def _spawn(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start a server subprocess in its own session, so it and its children can be stopped together."""
    return subprocess.Popen(PIN["server"] + argv, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            env={**os.environ, **env} if env else None)


def bench_project(folder: Path | None = None) -> Path:
    """A project folder holding a copy of the benchmark app (as `benchmarks.app`), so runs never share
    state (registry, control socket) with the repository or with each other."""
    project = folder or Path(tempfile.mkdtemp(prefix="microkit-bench-"))
    if folder is None:
        atexit.register(shutil.rmtree, project, True)
    (project / "benchmarks").mkdir(parents=True, exist_ok=True)
    (project / "benchmarks" / "__init__.py").write_text("")
    shutil.copy(ROOT / "benchmarks" / "app.py", project / "benchmarks" / "app.py")
    return project


def run_worker_process(app_spec: str, host: str, port: int, project: Path | None = None,
                       env: dict | None = None) -> subprocess.Popen:
    """Start `microkit up --no-gateway` on a benchmark project whose one service "bench" (1 worker) is `app_spec`."""
    project = bench_project(project)
    (project / "microkit.toml").write_text(
        f'[project]\nname = "bench"\n\n'
        f'[services.bench]\napp = "{app_spec}"\nworkers = 1\nlisten = "{host}:{port}"\naccess_log = false\n')
    microkit = str(Path(sys.executable).with_name("microkit"))
    return _spawn([microkit, "up", "--no-gateway", "-c", str(project / "microkit.toml")], env)


def run_worker_iouring(app_spec: str, host: str, port: int) -> subprocess.Popen:
    """The same `microkit up` worker with gevent's libev on io_uring (`GEVENT_BACKEND=linux_iouring,epoll`),
    whose timers are not rounded up to whole milliseconds as epoll's are."""
    return run_worker_process(app_spec, host, port, env={"GEVENT_BACKEND": "linux_iouring,epoll"})


def run_worker_pure(app_spec: str, host: str, port: int) -> subprocess.Popen:
    """The same `microkit up` worker on the engine's pure-Python path (`MICROKIT_PURE_PYTHON=1`): what the
    compiled hot path (microkit/http/_speedups.c) buys."""
    return run_worker_process(app_spec, host, port, env={"MICROKIT_PURE_PYTHON": "1"})


def worker_pid(proc: subprocess.Popen) -> int:
    """The pid that serves: a `microkit up` process's only child, else the process itself."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return int(children[0]) if children else proc.pid


def run_gunicorn(app_spec: str, host: str, port: int) -> subprocess.Popen:
    """Start `gunicorn -k gevent -w 1` serving `app_spec`."""
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    return _spawn([gunicorn, "-k", "gevent", "-w", "1", "-b", f"{host}:{port}", "--log-level", "warning", app_spec])


def run_granian(app_spec: str, host: str, port: int) -> subprocess.Popen:
    """Start granian (Rust) serving `app_spec` as WSGI with 1 worker and its default threads, HTTP/1 only."""
    granian = str(Path(sys.executable).with_name("granian"))
    return _spawn([granian, "--interface", "wsgi", "--workers", "1", "--http", "1", "--no-ws", "--host", host,
                   "--port", str(port), "--log-level", "warning", app_spec])


def run_bjoern(app_spec: str, host: str, port: int) -> subprocess.Popen:
    """Start bjoern (C, libev, one request at a time) serving `app_spec`."""
    module, _, attr = app_spec.partition(":")
    code = f"import bjoern, {module} as m; bjoern.run(m.{attr}, {host!r}, {port})"
    return _spawn([sys.executable, "-c", code])


def run_pywsgi(app_spec: str, host: str, port: int) -> subprocess.Popen:
    """Start gevent.pywsgi (with TCP_NODELAY on accepted sockets) serving `app_spec`."""
    return _spawn([sys.executable, "-c", PYWSGI_WORKER, app_spec, host, str(port)])


def stop(proc: subprocess.Popen) -> None:
    """Stop a server subprocess and everything in its session."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Wait until the server answers GET /."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s")


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    pids = [pid]
    for p in pids:
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                pids += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes, from /proc (a process gone since counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ms(text: str) -> float:
    """wrk latency text (`1.23ms`, `850.00us`, `1.2s`) in milliseconds."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def load_wrk(port: int, duration: int, connections: int, path: str = "/") -> tuple[float, float, float, int]:
    """Drive the server with wrk; return (req/s, p50 ms, p99 ms, requests)."""
    out = subprocess.run(
        PIN["load"] + ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", f"http://{HOST}:{port}{path}"],
        capture_output=True, text=True, timeout=duration + 30, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning on port {port}: {out.strip().splitlines()[-3:]}", file=sys.stderr)
    return rps, p50, p99, requests


def load_python(port: int, duration: int, connections: int, path: str = "/") -> tuple[float, float, float, int]:
    """Fallback load generator (threads with keep-alive http.client); far weaker than wrk."""
    latencies: list[float] = []
    deadline = time.monotonic() + duration

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            conn.request("GET", path)
            conn.getresponse().read()
            latencies.append((time.perf_counter() - started) * 1000)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(min(connections, 16))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 10)
    latencies.sort()
    n = len(latencies)
    return n / duration, latencies[n // 2], latencies[int(n * 0.99)], n



SERVERS = {
    "microkit": (run_worker_process, None),
    "microkit io_uring": (run_worker_iouring, None),
    "microkit pure": (run_worker_pure, None),
    "gunicorn -k gevent": (run_gunicorn, "gunicorn"),
    "granian": (run_granian, "granian"),
    "bjoern": (run_bjoern, "bjoern"),
    "pywsgi+NODELAY": (run_pywsgi, None),
}
WORKLOADS = {"tiny": "/", "wait": "/wait", "pg": "/pg"}
SERIAL = {"bjoern"}  # servers that answer one request at a time: a waiting route only measures the wait
WAIT_MS = 5.0
TARGETS = {"granian": 1.0, "gunicorn -k gevent": 2.5}


def installed(name: str) -> bool:
    """Whether a server's package is installed next to this Python (its message says how to get it if not)."""
    package = SERVERS[name][1]
    return package is None or importlib.util.find_spec(package) is not None


def postgres_answers(dsn: str) -> str | None:
    """None when `SELECT 1` works on `dsn`, else why not (one line)."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
    except psycopg2.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """`median (min-max)` of a list."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> int:
    """Start the servers, alternate load runs per workload, print medians, spread and ratios, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server and workload (alternating)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--servers", default="microkit,microkit io_uring,gunicorn -k gevent,granian,bjoern",
                        help=f"comma-separated, from: {', '.join(SERVERS)}")
    parser.add_argument("--workloads", default="tiny,wait,pg", help=f"comma-separated, from: {', '.join(WORKLOADS)}")
    parser.add_argument("--pin", action="store_true",
                        help="every server (all its threads) on the last CPU and wrk on the first, so each gets "
                             "exactly one core: the capacity of one worker per core, as deployed")
    args = parser.parse_args()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or not shutil.which("taskset"):
            print("--pin needs two CPUs and taskset (util-linux)", file=sys.stderr)
            return 2
        PIN["server"], PIN["load"] = ["taskset", "-c", str(cpus[-1])], ["taskset", "-c", str(cpus[0])]
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [n for n in names if n not in SERVERS] + [w for w in workloads if w not in WORKLOADS]
    if unknown or "microkit" not in names:
        print(f"unknown server or workload: {', '.join(unknown)}" if unknown else "--servers must include microkit",
              file=sys.stderr)
        return 2
    for name in [n for n in names if not installed(n)]:
        print(f"{name} not installed: skipping it ({sys.executable} -m pip install {SERVERS[name][1]}"
              + (", which needs libev-dev from apt)" if name == "bjoern" else ")"), file=sys.stderr)
        names.remove(name)
    dsn = os.environ.get("MICROKIT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
    if "pg" in workloads:
        why = postgres_answers(dsn)
        if why is not None:
            print(f"PostgreSQL at {dsn} does not answer ({why}): skipping the pg workload "
                  "(set MICROKIT_BENCH_PG to a DSN that works)", file=sys.stderr)
            workloads.remove("pg")
    load = load_wrk if shutil.which("wrk") else load_python
    if load is load_python:
        print("wrk not found (apt-get install wrk): using the Python load generator (numbers are client-bound)",
              file=sys.stderr)

    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    results: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {w: {} for w in workloads}
    try:
        for name in names:
            port = free_port()
            procs[name] = (SERVERS[name][0](APP, HOST, port), port)
        for proc, port in procs.values():
            wait_ready(port, proc)
        time.sleep(0.5)
        idle_rss = rss_mb(worker_pid(procs["microkit"][0]))
        for workload in workloads:
            path = WORKLOADS[workload]
            runners = [n for n in names if not (workload == "wait" and n in SERIAL)]
            for name in set(names) - set(runners):
                print(f"{name} serves one request at a time: skipped on the {workload} route", file=sys.stderr)
            for name in runners:
                load(procs[name][1], 1, args.connections, path)  # warm up (connections, pools, caches)
                results[workload][name] = []
            for round_ in range(args.rounds):
                order = runners[round_ % len(runners):] + runners[:round_ % len(runners)]
                for name in order:
                    proc, port = procs[name]
                    pids = process_tree(proc.pid)
                    before = cpu_seconds(pids)
                    rps, p50, p99, requests = load(port, args.duration, args.connections, path)
                    cpu_us = (cpu_seconds(pids) - before) / max(requests, 1) * 1e6
                    results[workload][name].append((rps, p50, p99, cpu_us))
                    print(f"{workload:4s} round {round_ + 1} {name:20s} {rps:9.0f} req/s  p50 {p50:6.2f} ms  "
                          f"p99 {p99:6.2f} ms  {cpu_us:6.1f} us CPU/req", file=sys.stderr)
        busy_rss = rss_mb(worker_pid(procs["microkit"][0]))
    finally:
        for proc, _ in procs.values():
            stop(proc)

    tool = "wrk" if load is load_wrk else "python client"
    print(f"\n{tool} -t1 -c{args.connections} -d{args.duration}s, {args.rounds} alternating rounds, "
          "median (min-max), 1 process each" + (", each server pinned to one CPU and wrk to another" if args.pin else ""))
    for workload, runs in results.items():
        print(f"\n{workload} ({WORKLOADS[workload]})")
        print(f"{'server':20s} {'req/s':>22s} {'p50 ms':>20s} {'p99 ms':>8s} {'CPU us/req':>11s}")
        for name, rows in runs.items():
            column = list(zip(*rows))
            print(f"{name:20s} {spread(column[0]):>22s} {spread(column[1], '{:.2f}'):>20s} "
                  f"{statistics.median(column[2]):8.2f} {statistics.median(column[3]):11.1f}")
        for ours in [name for name in runs if name.startswith("microkit")]:
            for other in [name for name in runs if not name.startswith("microkit")]:
                ratios = [m[0] / o[0] for m, o in zip(runs[ours], runs[other])]
                goal = f"  (target >= {TARGETS[other]}x)" if other in TARGETS else ""
                print(f"{ours + ' / ' + other:39s} {spread(ratios, '{:.2f}x')}{goal}")
            if ours != "microkit" and "microkit" in runs:
                ratios = [m[0] / o[0] for m, o in zip(runs["microkit"], runs[ours])]
                print(f"{'microkit / ' + ours:39s} {spread(ratios, '{:.2f}x')}")
            if workload == "wait":
                p50 = statistics.median(row[1] for row in runs[ours])
                print(f"{ours} p50 on the {WAIT_MS:g} ms wait: {p50:.2f} ms, {p50 - WAIT_MS:+.2f} ms over the wait "
                      "(target <= +1 ms)")
    print(f"\nmicrokit worker RSS: idle {idle_rss:.1f} MB, after load {busy_rss:.1f} MB (target <= 40 MB idle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
