"""The Bottle app every worker benchmark serves: a tiny JSON route, one that waits, one that asks PostgreSQL.

`GET /` returns one small JSON object. `GET /wait` sleeps 5 ms with `time.sleep` (cooperative on
gevent servers, which monkey-patch it; a blocked thread on threaded ones) before the same answer.
`GET /pg` makes one PostgreSQL round trip (`SELECT 1` through psycopg2, DSN from MICROKIT_BENCH_PG)
on a connection kept in a small per-process pool, so a request pays a query, never a connect.
"""

import os
import threading
import time

import bottle

WAIT = 0.005
PG_DSN = os.environ.get("MICROKIT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
PG_POOL = 8

app = bottle.Bottle()
_connections: list = []
_slots = threading.BoundedSemaphore(PG_POOL)


@app.get("/")
def index() -> dict:
    """One small JSON object."""
    return {"hello": "world", "n": 1}


@app.get("/wait")
def wait() -> dict:
    """The same object after a 5 ms wait (an I/O-bound handler)."""
    time.sleep(WAIT)
    return {"hello": "world", "n": 1}


@app.get("/pg")
def pg() -> dict:
    """The answer of `SELECT 1` from PostgreSQL, on a pooled connection."""
    import psycopg2

    with _slots:
        conn = _connections.pop() if _connections else None
        if conn is None:
            conn = psycopg2.connect(PG_DSN, connect_timeout=5)
            conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                n = cursor.fetchone()[0]
        except psycopg2.Error:
            conn.close()
            raise
        _connections.append(conn)
    return {"hello": "world", "n": n}
