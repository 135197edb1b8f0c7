"""What a shadow copy adds to the primary's latency: the same project with and without
`shadow = { percent = 100 }`, each under the real `microkit up`, measured in alternation.

Run from the repository root: `python benchmarks/bench_shadow.py [--requests 2000] [--rounds 5]`.
Each project has a `users` service (1 microkit worker) as the primary and the legacy app of the
migration tests (a stdlib threaded server, run as a command service) as `gateway.legacy`, so the
shadow project copies every GET /users/ID to legacy and compares the answers. A paced client (one
keep-alive connection, one request every `--interval` ms) measures each project's p50 and p99 in
turn (off/on, off/on, ...); printed: per-round p50s, the medians, and the median of the per-round
differences (target: at most 1 ms at p50). Every process is killed on exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "sup_apps"


def make(folder: Path, shadow: bool) -> Path:
    (folder / "services" / "users").mkdir(parents=True)
    (folder / "services" / "legacy").mkdir(parents=True)
    for name in ("services/__init__.py", "services/users/__init__.py", "services/legacy/__init__.py"):
        (folder / name).write_text("")
    shutil.copy(APPS / "users_app.py", folder / "services" / "users" / "app.py")
    shutil.copy(APPS / "legacy_server.py", folder / "services" / "legacy" / "legacy_server.py")
    (folder / "microkit.toml").write_text(f"""[project]
name = "bench{'on' if shadow else 'off'}{os.getpid()}"

[gateway]
listen = "127.0.0.1:0"
legacy = "legacy"
access_log = false

[services.legacy]
command = "{sys.executable} services/legacy/legacy_server.py"

[services.users]
app = "services.users.app:app"
route = "/users"
access_log = false
""" + ('shadow = { percent = 100, methods = ["GET"], ignore = ["$.created_at"] }\n' if shadow else ""))
    return folder


def start(folder: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "microkit.cli", "up"], cwd=folder, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    for line in process.stdout:
        match = re.match(r"ready: gateway (http://[\d.:]+)", line)
        if match:
            return process, match.group(1)
        if time.monotonic() > deadline:
            break
    raise SystemExit(f"{folder}: microkit up did not get ready")


def measure(url: str, count: int, interval: float) -> list[float]:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    times = []
    for i in range(count):
        began = time.perf_counter()
        conn.request("GET", f"/users/{i % 50}")
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - began) * 1000)
        left = interval / 1000 - (time.perf_counter() - began)
        if left > 0:
            time.sleep(left)
    conn.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="ms between request starts")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    processes = []
    try:
        urls = {}
        for shadow in (False, True):
            process, url = start(make(tmp / ("on" if shadow else "off"), shadow))
            processes.append(process)
            urls[shadow] = url
        for url in urls.values():
            measure(url, 300, 0)  # warm up: connections pooled, the legacy service known
        p50 = {False: [], True: []}
        p99 = {False: [], True: []}
        for round_ in range(args.rounds):
            for shadow in (False, True):
                times = sorted(measure(urls[shadow], args.requests, args.interval))
                p50[shadow].append(statistics.median(times))
                p99[shadow].append(times[int(len(times) * 0.99)])
            print(f"round {round_ + 1}: p50 off {p50[False][-1]:.3f} ms, on {p50[True][-1]:.3f} ms "
                  f"(+{p50[True][-1] - p50[False][-1]:.3f})", file=sys.stderr)
        result = subprocess.run([sys.executable, "-m", "microkit.cli", "diff", "users", "--json"], cwd=tmp / "on",
                                capture_output=True, text=True)
        counts = json.loads(result.stdout)["users"]["counts"] if result.returncode == 0 else result.stderr
        deltas = [on - off for on, off in zip(p50[True], p50[False])]
        print(f"p50 without shadow: median {statistics.median(p50[False]):.3f} ms "
              f"(rounds {min(p50[False]):.3f}-{max(p50[False]):.3f}); p99 {statistics.median(p99[False]):.3f} ms")
        print(f"p50 with shadow:    median {statistics.median(p50[True]):.3f} ms "
              f"(rounds {min(p50[True]):.3f}-{max(p50[True]):.3f}); p99 {statistics.median(p99[True]):.3f} ms")
        print(f"added at p50: median of per-round differences {statistics.median(deltas):+.3f} ms "
              f"(rounds {min(deltas):+.3f} to {max(deltas):+.3f}); target <= 1 ms")
        print(f"shadow counters: {counts}")
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
