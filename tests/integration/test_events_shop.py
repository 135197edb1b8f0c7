"""The demo shop end to end with events: paying an order publishes payments.completed, the orders consumer
marks the order paid and announces orders.paid, and both notifications consumers log it. On the default
(embedded) store and on RabbitMQ."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request

import pytest

from support.cli import REPO
from support.events import Vhost
from support.up import Up
from microkit.testing import eventually


def call(base: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


@pytest.mark.parametrize("kind", ["embedded", "amqp"])
def test_paying_an_order_marks_it_paid_through_events(tmp_path, kind):
    vhost = Vhost() if kind == "amqp" else None
    root = tmp_path / "shop"
    shutil.copytree(REPO / "examples" / "shop", root, ignore=shutil.ignore_patterns("data", ".microkit", "__pycache__"))
    text = (REPO / "microkit.toml").read_text().replace('root = "examples/shop"\n', "")
    text = text.replace('listen = "127.0.0.1:8000"', 'listen = "127.0.0.1:0"')
    if vhost is not None:
        text = text.replace('# [events]\n# url = "amqp://guest:guest@127.0.0.1:5672/"',
                            f'[events]\nurl = "{vhost.url}"')
    (root / "microkit.toml").write_text(text)
    up = Up(root, gateway=True)
    try:
        base = up.wait_for(r"^ready: gateway (http://\S+)", 40).group(1)
        user = call(base, "POST", "/users", {"name": "ada"})
        order = call(base, "POST", "/orders", {"user_id": user["id"], "item": "book", "quantity": 2})
        call(base, "POST", "/payments", {"order_id": order["id"], "amount_cents": 1250})
        eventually(lambda: call(base, "GET", f"/orders/{order['id']}")["status"] == "paid", 20)
        line = rf"notify user {user['id']}: order {order['id']} is paid"
        eventually(lambda: len({m for m in re.findall(rf"^(notifications\.events\.\d) \| {line}", up.output, re.M)}) == 2,
                   20)
    finally:
        up.close()
        if vhost is not None:
            vhost.delete()
