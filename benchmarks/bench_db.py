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
| psycopg2, connection per request, unix socket | the first psycopg2 row over the server's unix socket (`--pg-socket`) |
| psycopg2, connect and close only | a connection per request and no query: the worker's connect rate |

The other rows measure the servers themselves, in the same rounds: 10 OS threads connecting per query
without HTTP or gevent, and `pgbench -C -c 10` (C, a connection per transaction) with the same query and
with `SELECT 1` (PostgreSQL's connect rate), when pgbench is installed. Printed: medians (min-max), and
the per-round ratios of the worker's connection-per-request rows to those references.

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
from urllib.parse import urlparse

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


@app.get("/psycopg2-unix")
def raw_psycopg2_unix():
    import psycopg2
    conn = psycopg2.connect(os.environ["PG_UNIX_URL"])
    try:
        conn.cursor().execute("SELECT pg_sleep(%s)", (seconds(),))
    finally:
        conn.close()
    return "ok"


@app.get("/psycopg2-connect")
def raw_psycopg2_connect():
    import psycopg2
    psycopg2.connect(PG).close()
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
    ("psycopg2, connection per request, unix socket", "fast", "/psycopg2-unix"),
    ("psycopg2, connect and close only (no query)", "fast", "/psycopg2-connect"),
]
THREADS_PG = "10 OS threads, psycopg2, connection per query, no HTTP"
THREADS_MY = "10 OS threads, PyMySQL, connection per query, no HTTP"
PGBENCH_SLEEP = "pgbench -C -c 10 -j 2, the same query (C client)"
PGBENCH_ONE = "pgbench -C -c 10 -j 2, SELECT 1: PostgreSQL's connect rate"
RATIOS = [  # (worker row, reference row): per-round ratios printed under the table
    ("psycopg2, connection per request", THREADS_PG),
    ("psycopg2, connection per request", PGBENCH_SLEEP),
    ("psycopg 3, connection per request", PGBENCH_SLEEP),
    ("psycopg2, connect and close only (no query)", PGBENCH_ONE),
    ("PyMySQL, connection per request", THREADS_MY),
]


def unix_socket_url(url: str, folder: str) -> str | None:
    """`url` through the server's unix socket in `folder`, or None when there is no such socket."""
    parts = urlparse(url)
    if not (Path(folder) / f".s.PGSQL.{parts.port or 5432}").exists():
        return None
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}/{parts.path.lstrip('/')}?host={folder}&port={parts.port or 5432}"


def start(folder: Path, blocking: bool, pg_unix: str) -> tuple[subprocess.Popen, str]:
    """`microkit up --no-gateway` on a project of its own; returns the process and the service's URL."""
    project = folder / ("slow" if blocking else "fast")
    (project / "dbbench").mkdir(parents=True)
    (project / "dbbench" / "__init__.py").write_text("")
    (project / "dbbench" / "app.py").write_text(APP)
    env = f'PG_URL = "{POSTGRES}", MYSQL_URL = "{MYSQL}", PG_UNIX_URL = "{pg_unix}"' \
        + (', BLOCKING = "1"' if blocking else "")
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


def pgbench(sql: str, duration: float, folder: Path) -> float:
    """Transactions/s of `pgbench -C -c 10 -j 2` running `sql`, a new connection per transaction."""
    script = folder / "pgbench.sql"
    script.write_text(sql + ";\n")
    parts = urlparse(POSTGRES)
    out = subprocess.run(["pgbench", "-n", "-C", "-c", "10", "-j", "2", "-T", f"{max(1, round(duration))}",
                          "-f", str(script), "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
                          "-U", parts.username or "postgres", parts.path.lstrip("/")],
                         capture_output=True, text=True, timeout=duration + 30)
    found = re.search(r"tps = ([\d.]+)", out.stdout)
    if found is None:
        raise SystemExit(f"pgbench failed: {(out.stderr or out.stdout).strip()}")
    return float(found.group(1))


def references(query_s: float, duration: float, folder: Path) -> dict[str, float]:
    import psycopg2
    import pymysql
    parts = urlparse(MYSQL)
    rates = {
        THREADS_PG: threads_reference(lambda: psycopg2.connect(POSTGRES), "SELECT pg_sleep(%s)", query_s, duration),
        THREADS_MY: threads_reference(
            lambda: pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                                    password=parts.password or "", database=parts.path.lstrip("/")),
            "SELECT SLEEP(%s)", query_s, duration),
    }
    if shutil.which("pgbench"):
        rates[PGBENCH_SLEEP] = pgbench(f"SELECT pg_sleep({query_s:g})", duration, folder)
        rates[PGBENCH_ONE] = pgbench("SELECT 1", duration, folder)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--query-ms", type=float, default=50.0)
    parser.add_argument("--pg-socket", default="/var/run/postgresql",
                        help="folder of PostgreSQL's unix socket, for the unix socket row")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    if shutil.which("pgbench") is None:
        print("pgbench not found (apt-get install postgresql-client): no pgbench rows", file=sys.stderr)
    pg_unix = unix_socket_url(POSTGRES, args.pg_socket)
    workloads = [w for w in WORKLOADS if pg_unix or w[2] != "/psycopg2-unix"]
    if pg_unix is None:
        print(f"no PostgreSQL socket in {args.pg_socket} (--pg-socket): no unix socket row", file=sys.stderr)
    folder = Path(tempfile.mkdtemp(prefix="microkit-dbbench-"))
    servers = {}
    try:
        for kind in ("slow", "fast"):
            servers[kind] = start(folder, blocking=kind == "slow", pg_unix=pg_unix or "")
        query = f"?{args.query_ms / 1000:g}"
        for _, kind, path in workloads:
            urllib.request.urlopen(servers[kind][1] + path + query, timeout=10).read()  # warm: pools, imports
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in workloads}
        for round_number in range(args.rounds):
            for name, kind, path in workloads:
                rate, p50 = wrk(servers[kind][1] + path + query, args.duration)
                results[name].append((rate, p50))
                print(f"round {round_number + 1}: {name}: {rate:.0f} req/s, p50 {p50:.1f} ms", file=sys.stderr)
            for name, rate in references(args.query_ms / 1000, args.duration, folder).items():
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
        print("\nratios of the same rounds, median (min-max):")
        for ours, reference in RATIOS:
            if ours in results and reference in results:
                ratios = [mine[0] / theirs[0] for mine, theirs in zip(results[ours], results[reference])]
                print(f"{ours} / {reference}: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    finally:
        for process, _ in servers.values():
            stop(process)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
