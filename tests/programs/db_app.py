"""A Bottle app on real databases, for the worker database tests (issue 9).

/raw/psycopg2?S, /raw/psycopg?S, /raw/pymysql?S   a connection per request (PG_URL, MYSQL_URL), a query
                                                  sleeping S seconds on the server; answers the backend id
/pooled?S                                         the same through microkit.db's pool on DATABASE_URL
/drivers                                          which drivers the worker made cooperative
"""

import os
from urllib.parse import urlparse

import bottle

from microkit import db as pooled
from microkit.supervisor import drivers

app = bottle.Bottle()
database = pooled.connect(os.environ["DATABASE_URL"]) if os.environ.get("DATABASE_URL") else None
POSTGRES = bool(database) and os.environ["DATABASE_URL"].startswith("postgres")


def seconds() -> float:
    return float(bottle.request.query_string or 0)


@app.get("/raw/psycopg2")
def raw_psycopg2() -> dict:
    import psycopg2
    conn = psycopg2.connect(os.environ["PG_URL"])
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_sleep(%s), pg_backend_pid()", (seconds(),))
        return {"backend": cur.fetchone()[1]}
    finally:
        conn.close()


@app.get("/raw/psycopg")
def raw_psycopg() -> dict:
    import psycopg
    with psycopg.connect(os.environ["PG_URL"]) as conn:
        return {"backend": conn.execute("SELECT pg_sleep(%s), pg_backend_pid()", (seconds(),)).fetchone()[1]}


@app.get("/raw/pymysql")
def raw_pymysql() -> dict:
    import pymysql
    parts = urlparse(os.environ["MYSQL_URL"])
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                           password=parts.password or "", database=parts.path.lstrip("/"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT SLEEP(%s), CONNECTION_ID()", (seconds(),))
            return {"backend": cur.fetchone()[1]}
    finally:
        conn.close()


@app.hook("before_request")
def checkout() -> None:
    if database is not None and bottle.request.path == "/pooled":
        database.connect(reuse_if_open=True)


@app.hook("after_request")
def checkin() -> None:
    if database is not None and not database.is_closed():
        database.close()


@app.get("/pooled")
def pooled_query() -> dict:
    sql = "SELECT pg_sleep(%s), pg_backend_pid()" if POSTGRES else "SELECT SLEEP(%s), CONNECTION_ID()"
    return {"backend": database.execute_sql(sql, (seconds(),)).fetchone()[1], "pid": os.getpid()}


@app.get("/drivers")
def cooperative() -> dict:
    import psycopg
    import psycopg2
    return {name: drivers.is_cooperative(name) for name in ("psycopg2", "psycopg", "pymysql")}
