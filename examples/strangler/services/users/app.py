"""The users service carved out of the monolith: the same /users answers, as a microkit service.

It reads and writes the monolith's own table (data/shop.db) while traffic moves over; once the
route is cut over and the monolith's /users code is gone, the table can move to a database of
the service's own.
"""

import datetime
import json
import sqlite3
from pathlib import Path

import bottle

DATABASE = Path(__file__).resolve().parents[2] / "data" / "shop.db"
NOT_FOUND = "user not found"

app = bottle.Bottle()


def connect() -> sqlite3.Connection:
    conn = sqlite3.connect(DATABASE, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def user_json(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "name": row["name"], "email": row["email"], "created_at": row["created_at"]}


def answer(data, status: int = 200) -> str:
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    bottle.response.set_header("X-Served-By", "users")
    return json.dumps(data)


@app.get("/healthz")
def healthz() -> str:
    return answer({"status": "ok"})


@app.get("/users/")
def users() -> str:
    with connect() as conn:
        return answer([user_json(r) for r in conn.execute("SELECT * FROM users ORDER BY id")])


@app.get("/users/<user_id:int>")
def user(user_id: int) -> str:
    with connect() as conn:
        row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    return answer({"error": NOT_FOUND}, 404) if row is None else answer(user_json(row))


@app.post("/users/")
def create_user() -> str:
    try:
        data = json.load(bottle.request.body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("email"), str):
        return answer({"error": "name and email are required"}, 400)
    with connect() as conn:
        cursor = conn.execute("INSERT INTO users (name, email, created_at) VALUES (?, ?, ?)",
                              (data["name"], data["email"], datetime.datetime.now().replace(microsecond=0).isoformat()))
        row = conn.execute("SELECT * FROM users WHERE id = ?", (cursor.lastrowid,)).fetchone()
    return answer(user_json(row), 201)
