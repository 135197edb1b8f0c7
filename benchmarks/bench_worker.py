"""One worker process, side by side: `microkit up` vs gunicorn -k gevent vs gevent.pywsgi (TCP_NODELAY).

Run from the repository root: `python benchmarks/bench_worker.py [--duration 5] [--rounds 3]`.
Each server runs as its own subprocess on loopback; wrk (or a bounded Python fallback) drives them
in turn A/B/C, A/B/C, ... and the medians are printed with the ratio to gunicorn. The microkit side
is the real `microkit up --no-gateway` on a temporary project with one service of 1 worker.
"""

import argparse
import atexit
import http.client
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


def _spawn(argv: list[str]) -> subprocess.Popen:
    """Start a server subprocess in its own session, so it and its children can be stopped together."""
    return subprocess.Popen(argv, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL)


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


def run_worker_process(app_spec: str, host: str, port: int, project: Path | None = None) -> subprocess.Popen:
    """Start `microkit up --no-gateway` on a benchmark project whose one service "bench" (1 worker) is `app_spec`."""
    project = bench_project(project)
    (project / "microkit.toml").write_text(
        f'[project]\nname = "bench"\n\n'
        f'[services.bench]\napp = "{app_spec}"\nworkers = 1\nlisten = "{host}:{port}"\naccess_log = false\n')
    microkit = str(Path(sys.executable).with_name("microkit"))
    return _spawn([microkit, "up", "--no-gateway", "-c", str(project / "microkit.toml")])


def worker_pid(proc: subprocess.Popen) -> int:
    """The pid that serves: a `microkit up` process's only child, else the process itself."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return int(children[0]) if children else proc.pid


def run_gunicorn(app_spec: str, host: str, port: int) -> subprocess.Popen:
    """Start `gunicorn -k gevent -w 1` serving `app_spec`."""
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    return _spawn([gunicorn, "-k", "gevent", "-w", "1", "-b", f"{host}:{port}", "--log-level", "warning", app_spec])


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


def load_wrk(port: int, duration: int, connections: int) -> tuple[float, float, float]:
    """Drive the server with wrk; return (req/s, p50 ms, p99 ms)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", f"http://{HOST}:{port}/"],
        capture_output=True, text=True, timeout=duration + 30, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning on port {port}: {out.strip().splitlines()[-3:]}", file=sys.stderr)
    return rps, p50, p99


def load_python(port: int, duration: int, connections: int) -> tuple[float, float, float]:
    """Fallback load generator (threads with keep-alive http.client); far weaker than wrk."""
    latencies: list[float] = []
    deadline = time.monotonic() + duration

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            conn.request("GET", "/")
            conn.getresponse().read()
            latencies.append((time.perf_counter() - started) * 1000)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(min(connections, 16))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 10)
    latencies.sort()
    return len(latencies) / duration, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def main() -> None:
    """Start the three servers, alternate load runs, print medians and ratios, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server (alternating)")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    load = load_wrk if shutil.which("wrk") else load_python
    if load is load_python:
        print("wrk not found: using the Python load generator (numbers are client-bound)", file=sys.stderr)

    launchers = {"microkit": run_worker_process, "gunicorn -k gevent": run_gunicorn, "pywsgi+NODELAY": run_pywsgi}
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for name, launch in launchers.items():
            port = free_port()
            procs[name] = (launch(APP, HOST, port), port)
        for proc, port in procs.values():
            wait_ready(port, proc)
        time.sleep(0.5)
        idle_rss = rss_mb(worker_pid(procs["microkit"][0]))
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in procs}
        for round_ in range(args.rounds):
            for name, (_, port) in procs.items():
                results[name].append(load(port, args.duration, args.connections))
                print(f"round {round_ + 1} {name:20s} {results[name][-1][0]:10.0f} req/s", file=sys.stderr)
        busy_rss = rss_mb(worker_pid(procs["microkit"][0]))
    finally:
        for proc, _ in procs.values():
            stop(proc)

    medians = {name: [statistics.median(run[i] for run in runs) for i in range(3)] for name, runs in results.items()}
    base = medians["gunicorn -k gevent"][0]
    paired = statistics.median(a[0] / b[0] for a, b in zip(results["microkit"], results["gunicorn -k gevent"]))
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, median of {args.rounds} alternating runs, 1 worker each")
    print(f"{'server':22s} {'req/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs gunicorn':>12s}")
    for name, (rps, p50, p99) in medians.items():
        print(f"{name:22s} {rps:10.0f} {p50:8.2f} {p99:8.2f} {rps / base:11.2f}x")
    print(f"microkit / gunicorn, median of per-round ratios: {paired:.2f}x (target >= 2.5x)")
    print(f"microkit worker RSS: idle {idle_rss:.1f} MB, after load {busy_rss:.1f} MB (target <= 40 MB idle)")


if __name__ == "__main__":
    main()
