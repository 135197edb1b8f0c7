"""The legacy shop: users, orders and payments in one Flask app and one SQLite file.

Run by microkit as a command service (`[services.monolith]` in microkit.toml): it serves on $PORT.
The data lives in data/shop.db next to microkit.toml, seeded on the first start; the new `users`
service reads and writes the same table while the route moves out.

    GET  /users/, /users/<id>, POST /users/      GET /orders/, /orders/<id>, POST /orders/
    GET  /payments/, POST /payments/             GET /healthz
"""

import datetime
import logging
import os
import sqlite3
from pathlib import Path

from flask import Flask, g, jsonify, request

DATABASE = Path(__file__).resolve().parents[1] / "data" / "shop.db"
SEED_USERS = [("Ada", "ada@example.com"), ("Grace", "grace@example.com"), ("Linus", "linus@example.com")]

app = Flask(__name__)


def db() -> sqlite3.Connection:
    if "db" not in g:
        g.db = sqlite3.connect(DATABASE, timeout=5)
        g.db.row_factory = sqlite3.Row
    return g.db


@app.teardown_appcontext
def close(_exc) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def setup() -> None:
    DATABASE.parent.mkdir(exist_ok=True)
    with sqlite3.connect(DATABASE) as conn:
        conn.execute("PRAGMA journal_mode=wal")
        conn.executescript("""
            CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
                                              created_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, item TEXT NOT NULL,
                                               status TEXT NOT NULL DEFAULT 'new');
            CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL,
                                                 amount INTEGER NOT NULL);
        """)
        if conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0:
            now = datetime.datetime(2024, 1, 1, 12, 0).isoformat()
            conn.executemany("INSERT INTO users (name, email, created_at) VALUES (?, ?, ?)",
                             [(name, email, now) for name, email in SEED_USERS])
            conn.execute("INSERT INTO orders (user_id, item) VALUES (1, 'book')")


def user_json(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "name": row["name"], "email": row["email"], "created_at": row["created_at"]}


@app.after_request
def served_by(response):
    response.headers["X-Served-By"] = "monolith"
    return response


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")


@app.get("/users/")
def users():
    return jsonify([user_json(r) for r in db().execute("SELECT * FROM users ORDER BY id")])


@app.get("/users/<int:user_id>")
def user(user_id: int):
    row = db().execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        return jsonify(error="no such user"), 404
    return jsonify(user_json(row))


@app.post("/users/")
def create_user():
    data = request.get_json(silent=True) or {}
    if not isinstance(data.get("name"), str) or not isinstance(data.get("email"), str):
        return jsonify(error="name and email are required"), 400
    conn = db()
    cursor = conn.execute("INSERT INTO users (name, email, created_at) VALUES (?, ?, ?)",
                          (data["name"], data["email"], datetime.datetime.now().replace(microsecond=0).isoformat()))
    conn.commit()
    return jsonify(user_json(conn.execute("SELECT * FROM users WHERE id = ?", (cursor.lastrowid,)).fetchone())), 201


@app.get("/orders/")
def orders():
    return jsonify([dict(r) for r in db().execute("SELECT * FROM orders ORDER BY id")])


@app.post("/orders/")
def create_order():
    data = request.get_json(silent=True) or {}
    conn = db()
    if conn.execute("SELECT 1 FROM users WHERE id = ?", (data.get("user_id"),)).fetchone() is None:
        return jsonify(error="no such user"), 400
    cursor = conn.execute("INSERT INTO orders (user_id, item) VALUES (?, ?)", (data["user_id"], data.get("item", "")))
    conn.commit()
    return jsonify(dict(conn.execute("SELECT * FROM orders WHERE id = ?", (cursor.lastrowid,)).fetchone())), 201


@app.get("/payments/")
def payments():
    return jsonify([dict(r) for r in db().execute("SELECT * FROM payments ORDER BY id")])


@app.post("/payments/")
def pay():
    data = request.get_json(silent=True) or {}
    conn = db()
    cursor = conn.execute("INSERT INTO payments (order_id, amount) VALUES (?, ?)",
                          (data.get("order_id"), data.get("amount", 0)))
    conn.execute("UPDATE orders SET status = 'paid' WHERE id = ?", (data.get("order_id"),))
    conn.commit()
    return jsonify(id=cursor.lastrowid, order_id=data.get("order_id"), amount=data.get("amount", 0)), 201


if __name__ == "__main__":
    from werkzeug.serving import run_simple

    setup()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # microkit's gateway logs every request already
    run_simple(os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]), app, threaded=True)
