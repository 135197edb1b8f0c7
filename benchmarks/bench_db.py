"""One microkit worker waiting on real databases (issue 9): does a 50 ms query block the worker's loop?

Run from the repository root: `python benchmarks/bench_db.py [--duration 5] [--rounds 3] [--query-ms 50]`.
It starts the real `microkit up --no-gateway` on a temporary project with one service of 1 worker and
drives it with `wrk -t1 -c10` (10 requests at once, each one query sleeping `--query-ms` on the server):

| workload | what a request does |
| --- | --- |
| psycopg2, blocking | a connection per request through psycopg2 with its wait callback removed (the old behaviour) |
| psycopg2, connection per request | the same with the worker's cooperative wait callback |
| psycopg 3, connection per request | psycopg 3 |
| PyMySQL, connection per request | PyMySQL on MariaDB |
| pooled peewee, PostgreSQL | `microkit.db.connect(...)`, a connection checked out around the request |
| pooled peewee, MariaDB | the same on MariaDB |

Two more rows measure the servers themselves: 10 OS threads connecting per query without HTTP or gevent.

The cooperative limit is 10 / 0.050 = 200 req/s. Servers: MICROKIT_TEST_POSTGRES and MICROKIT_TEST_MYSQL
(default the local ones, database `test`); the queries create nothing.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("MICROKIT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("MICROKIT_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")

APP = '''
import os
from urllib.parse import urlparse

import bottle

from microkit import db

app = bottle.Bottle()
PG, MY = os.environ["PG_URL"], os.environ["MYSQL_URL"]
pg_pool, my_pool = db.connect(PG), db.connect(MY)
if os.environ.get("BLOCKING"):
    import psycopg2.extensions
    psycopg2.extensions.set_wait_callback(None)


def seconds():
    return float(bottle.request.query_string)


@app.get("/psycopg2")
def raw_psycopg2():
    import psycopg2
    conn = psycopg2.connect(PG)
    try:
        conn.cursor().execute("SELECT pg_sleep(%s)", (seconds(),))
    finally:
        conn.close()
    return "ok"


@app.get("/psycopg")
def raw_psycopg():
    import psycopg
    with psycopg.connect(PG) as conn:
        conn.execute("SELECT pg_sleep(%s)", (seconds(),))
    return "ok"


@app.get("/pymysql")
def raw_pymysql():
    import pymysql
    parts = urlparse(MY)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                           password=parts.password or "", database=parts.path.lstrip("/"))
    try:
        conn.cursor().execute("SELECT SLEEP(%s)", (seconds(),))
    finally:
        conn.close()
    return "ok"


def pooled(database, sql):
    with database.connection_context():
        database.execute_sql(sql, (seconds(),))
    return "ok"


@app.get("/pooled-pg")
def pooled_pg():
    return pooled(pg_pool, "SELECT pg_sleep(%s)")


@app.get("/pooled-mysql")
def pooled_mysql():
    return pooled(my_pool, "SELECT SLEEP(%s)")
'''

WORKLOADS = [
    ("psycopg2, blocking (wait callback removed)", "slow", "/psycopg2"),
    ("psycopg2, connection per request", "fast", "/psycopg2"),
    ("psycopg 3, connection per request", "fast", "/psycopg"),
    ("PyMySQL, connection per request", "fast", "/pymysql"),
    ("pooled peewee (microkit.db), PostgreSQL", "fast", "/pooled-pg"),
    ("pooled peewee (microkit.db), MariaDB", "fast", "/pooled-mysql"),
]


def start(folder: Path, blocking: bool) -> tuple[subprocess.Popen, str]:
    """`microkit up --no-gateway` on a project of its own; returns the process and the service's URL."""
    project = folder / ("slow" if blocking else "fast")
    (project / "dbbench").mkdir(parents=True)
    (project / "dbbench" / "__init__.py").write_text("")
    (project / "dbbench" / "app.py").write_text(APP)
    env = f'PG_URL = "{POSTGRES}", MYSQL_URL = "{MYSQL}"' + (', BLOCKING = "1"' if blocking else "")
    (project / "microkit.toml").write_text(
        '[project]\nname = "dbbench"\n\n[services.dbbench]\napp = "dbbench.app:app"\nworkers = 1\n'
        f"access_log = false\nenv = {{ {env} }}\n")
    process = subprocess.Popen([sys.executable, "-m", "microkit.cli", "up", "--no-gateway"], cwd=project,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 30
    for line in process.stdout:
        match = re.match(r"ready: dbbench (http://\S+)", line)
        if match:
            return process, match.group(1)
        if time.monotonic() > deadline:
            break
    stop(process)
    raise SystemExit(f"microkit up did not get ready:\n{line}")


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wrk(url: str, duration: float) -> tuple[float, float]:
    """req/s and p50 (ms) of `wrk -t1 -c10` against `url`."""
    out = subprocess.run(["wrk", "-t1", "-c10", f"-d{duration:g}s", "--latency", url],
                         capture_output=True, text=True, timeout=duration + 30).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"50%\s+([\d.]+)(us|ms|s)", out).groups()
    p50 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  {url}: {errors.group(1)} non-2xx answers", file=sys.stderr)
    return rate, p50


def threads_reference(connect, sleep_sql: str, query_s: float, duration: float) -> float:
    """Queries/s of 10 OS threads doing the same without HTTP or gevent, a connection per query: what the
    database server allows for a connection per request, the best any client can do."""
    import threading
    done = [0]
    end = time.monotonic() + duration

    def loop() -> None:
        while time.monotonic() < end:
            conn = connect()
            try:
                conn.cursor().execute(sleep_sql, (query_s,))
            finally:
                conn.close()
            done[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / duration


def references(query_s: float, duration: float) -> dict[str, float]:
    import psycopg2
    import pymysql
    from urllib.parse import urlparse
    parts = urlparse(MYSQL)
    return {
        "10 OS threads, psycopg2, connection per query, no HTTP": threads_reference(
            lambda: psycopg2.connect(POSTGRES), "SELECT pg_sleep(%s)", query_s, duration),
        "10 OS threads, PyMySQL, connection per query, no HTTP": threads_reference(
            lambda: pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                                    password=parts.password or "", database=parts.path.lstrip("/")),
            "SELECT SLEEP(%s)", query_s, duration),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--query-ms", type=float, default=50.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    folder = Path(tempfile.mkdtemp(prefix="microkit-dbbench-"))
    servers = {}
    try:
        for kind in ("slow", "fast"):
            servers[kind] = start(folder, blocking=kind == "slow")
        query = f"?{args.query_ms / 1000:g}"
        for _, kind, path in WORKLOADS:
            urllib.request.urlopen(servers[kind][1] + path + query, timeout=10).read()  # warm: pools, imports
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in WORKLOADS}
        for round_number in range(args.rounds):
            for name, kind, path in WORKLOADS:
                rate, p50 = wrk(servers[kind][1] + path + query, args.duration)
                results[name].append((rate, p50))
                print(f"round {round_number + 1}: {name}: {rate:.0f} req/s, p50 {p50:.1f} ms", file=sys.stderr)
            for name, rate in references(args.query_ms / 1000, args.duration).items():
                results.setdefault(name, []).append((rate, float("nan")))
                print(f"round {round_number + 1}: {name}: {rate:.0f} queries/s", file=sys.stderr)
        limit = 10 / (args.query_ms / 1000)
        print(f"one worker, wrk -t1 -c10, {args.query_ms:g} ms queries (limit {limit:.0f} req/s), "
              f"{args.rounds} x {args.duration:g} s, medians (min-max):")
        print("| workload | req/s | p50 |")
        print("| --- | --- | --- |")
        for name, runs in results.items():
            rates = [r for r, _ in runs]
            p50 = statistics.median(p for _, p in runs)
            print(f"| {name} | {statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f}) "
                  f"| {'-' if p50 != p50 else f'{p50:.1f} ms'} |")
    finally:
        for process, _ in servers.values():
            stop(process)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
