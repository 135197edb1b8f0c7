"""Events end to end: the real `microkit up` running consumer processes, against the real RabbitMQ (a vhost
of the test's own), the real Redis (a key prefix of the test's own, or a private redis-server for restarts)
and the embedded SQLite store. Every wait is on a condition."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from support.cli import PROGRAMS, run_cli
from support.events import EventsProject, Vhost, persistent_redis
from support.servers import REDIS_URL, delete_namespace, free_port, require_redis
from microkit.testing import eventually

KINDS = ["amqp", "redis", "embedded"]


@pytest.fixture
def make(tmp_path, request):
    """make(kind, services, handlers, events=None): an EventsProject on a store of this test's own."""
    made: list[tuple[EventsProject, str, object]] = []

    def make(kind: str, services: dict, handlers: dict, events: dict | None = None, url: str | None = None):
        store = None
        if url is None and kind == "amqp":
            store = Vhost()
            url = store.url
        elif url is None and kind == "redis":
            require_redis(REDIS_URL)
            url = REDIS_URL
        project = EventsProject(tmp_path / f"p{len(made)}", url, services, handlers=handlers, events=events)
        project.store = store
        made.append((project, kind, store))
        return project

    yield make
    for project, kind, store in made:
        project.close()
        if isinstance(store, Vhost):
            store.delete()
        elif kind == "redis" and project.url == REDIS_URL:
            delete_namespace(REDIS_URL, project.namespace)


def pool(kind="pool", **options) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in {"retries": 2, "retry_delay": 0.05, **options}.items())
    return f'@events.handler("t.{kind}", mode="{kind}", {args})'


@pytest.mark.parametrize("kind", KINDS)
def test_pool_shares_out_broadcast_reaches_every_consumer_with_the_envelope(make, kind):
    project = make(kind, {"orders": {"consumers": 2}},
                   {"orders": [pool(), '@events.handler("t.broadcast", mode="broadcast")']})
    project.up()
    events = project.events()
    ids = [events.publish("t.pool", {"n": n}, request_id=f"req-{n}").id for n in range(12)]
    bids = [events.publish("t.broadcast", {"n": n}).id for n in range(3)]
    eventually(lambda: len(project.read("done", type="t.pool")) >= 12
               and len(project.read("done", type="t.broadcast")) >= 6, 20)
    done = project.read("done", type="t.pool")
    assert sorted(r["id"] for r in done) == sorted(ids)  # each event to one consumer of the service
    first = next(r for r in done if r["id"] == ids[0])
    assert first["request_id"] == "req-0" and first["source"] == "test" and first["delivery"] == 1
    broadcast = project.read("done", type="t.broadcast")
    assert {(r["id"], r["pid"]) for r in broadcast} == {(i, p) for i in bids for p in {r["pid"] for r in broadcast}}
    assert len({r["pid"] for r in broadcast}) == 2  # every running consumer got each one


@pytest.mark.parametrize("kind", KINDS)
def test_consumer_down_at_publish_time_gets_the_events_when_it_comes_back(make, kind):
    project = make(kind, {"orders": {}}, {"orders": [pool(), '@events.handler("t.broadcast", mode="broadcast")']})
    up = project.up()
    up.signal(signal.SIGTERM)
    assert up.wait() == 0
    events = project.events()
    ids = [events.publish("t.pool", {"n": n}).id for n in range(5)]
    bid = events.publish("t.broadcast", {}).id
    project.up()
    eventually(lambda: len(project.read("done")) >= 6, 20)
    assert sorted(r["id"] for r in project.read("done")) == sorted(ids + [bid])


@pytest.mark.parametrize("kind", KINDS)
def test_consumer_killed_mid_handler_gets_the_event_again(make, kind):
    project = make(kind, {"orders": {}}, {"orders": [pool()]}, events={"claim_after": 1})
    project.up()
    event = project.events().publish("t.pool", {"sleep": 30})
    started = eventually(lambda: project.read("start", id=event.id), 15)[0]
    os.kill(started["pid"], signal.SIGKILL)
    again = eventually(lambda: [r for r in project.read("start", id=event.id) if r["pid"] != started["pid"]], 20)[0]
    assert again["delivery"] >= 2  # a redelivery, and its handler runs again


@pytest.mark.parametrize("kind", KINDS)
def test_failing_handler_is_retried_then_dead_lettered_then_replayed(make, kind, tmp_path):
    project = make(kind, {"orders": {}}, {"orders": [pool(retries=2)]})
    project.up()
    flag = tmp_path / "failing"
    flag.write_text("")
    event = project.events().publish("t.pool", {"fail_while": str(flag)})
    eventually(lambda: run_cli("events", "dead", "orders", "--json", cwd=project.root).stdout.count(event.id), 20)
    assert len(project.read("fail", id=event.id)) == 3  # the first try and 2 retries
    listed = run_cli("events", "dead", cwd=project.root)
    assert listed.returncode == 0 and event.id in listed.stdout and "RuntimeError: failing on purpose" in listed.stdout
    letter = json.loads(run_cli("events", "dead", "--json", cwd=project.root).stdout)[0]
    assert letter["service"] == "orders" and letter["payload"] == {"fail_while": str(flag)}
    assert run_cli("events", "dead", "billing", cwd=project.root).stdout.strip() == "no dead letters for billing"
    missing = run_cli("events", "replay", "nope", cwd=project.root)
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "microkit: error: no dead letter with id 'nope' (see `microkit events dead`)")
    flag.unlink()
    replayed = run_cli("events", "replay", event.id, cwd=project.root)
    assert replayed.returncode == 0 and replayed.stdout.strip() == "replayed 1 event(s)"
    eventually(lambda: project.read("done", id=event.id), 20)
    assert run_cli("events", "dead", cwd=project.root).stdout.strip() == "no dead letters"


@pytest.mark.parametrize("kind", KINDS)
def test_once_skips_an_event_handled_already(make, kind):
    project = make(kind, {"orders": {}}, {"orders": [pool()]})
    project.up()
    events = project.events()
    event = events.publish("t.pool", {"once": True})
    eventually(lambda: project.read("done", id=event.id), 15)
    events.backend().publish(event)  # the same envelope again, as a redelivery would bring it
    eventually(lambda: project.read("duplicate", id=event.id), 15)
    assert len(project.read("done", id=event.id)) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_prefetch_bounds_unacked_events_per_consumer_and_one_consumer_keeps_order(make, kind):
    project = make(kind, {"orders": {}}, {"orders": [pool()]}, events={"prefetch": 3})
    project.up()
    events = project.events()
    slow = [events.publish("t.pool", {"sleep": 0.3, "n": n}).id for n in range(9)]
    eventually(lambda: len(project.read("done")) >= 9, 30)
    rows = sorted(project.read(), key=lambda r: r["time"])
    running = peak = 0
    for row in rows:
        running += 1 if row["step"] == "start" else -1
        peak = max(peak, running)
    assert peak == 3
    assert [r["id"] for r in rows if r["step"] == "start"][:3] == slow[:3]
    project2 = make(kind, {"orders": {}}, {"orders": [pool()]}, events={"prefetch": 1})
    project2.up()
    ordered = [project2.events().publish("t.pool", {"n": n}).id for n in range(15)]
    eventually(lambda: len(project2.read("done")) >= 15, 20)
    assert [r["id"] for r in project2.read("start")] == ordered


@pytest.mark.parametrize("kind", KINDS)
def test_singleton_group_runs_each_event_once_across_services(make, kind):
    single = '@events.handler("t.single", mode="singleton", group="g1")'
    project = make(kind, {"orders": {"consumers": 2}, "audit": {}}, {"orders": [single], "audit": [single]})
    project.up()
    ids = [project.events().publish("t.single", {"n": n}).id for n in range(6)]
    eventually(lambda: len(project.read("done")) >= 6, 20)
    time.sleep(0.5)  # a second handling, if there were one, would have had time to land
    rows = project.read("done")
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert len({r["pid"] for r in rows}) == 1  # one active consumer in all


@pytest.mark.parametrize("kind", ["redis", "embedded"])
def test_pending_events_of_a_dead_consumer_are_claimed_after_claim_after(make, kind):
    project = make(kind, {"orders": {}}, {"orders": [pool()]}, events={"claim_after": 0.5})
    events = project.events()
    from microkit.events.backends.log import type_stream

    store = events.backend().store()
    store.ensure_group("orders", [type_stream("t.pool")])
    event = events.publish("t.pool", {})
    taken = store.read("orders", "ghost.9", [type_stream("t.pool")], 10, 0.5)  # a consumer that then died
    assert [e.entry_id for e in taken]
    project.up()
    row = eventually(lambda: project.read("done", id=event.id), 15)[0]
    assert row["delivery"] == 2


def test_redis_restart_keeps_acknowledged_events_and_consumers_reconnect(make, tmp_path):
    server = persistent_redis(tmp_path)
    server.start()
    try:
        project = make("redis", {"orders": {}}, {"orders": [pool()]}, url=server.url)
        up = project.up()
        events = project.events()
        first = events.publish("t.pool", {"n": 1}).id
        eventually(lambda: project.read("done", id=first), 15)
        server.stop()
        second = None
        server.start()
        second = events.publish("t.pool", {"n": 2}).id
        server.stop()  # the event is in the append-only file before its consumer may have read it
        server.start()
        third = events.publish("t.pool", {"n": 3}).id
        eventually(lambda: project.read("done", id=second) and project.read("done", id=third), 30)
        assert "events store unavailable" in up.output
    finally:
        server.stop()


def test_rabbitmq_connections_force_closed_consumers_reconnect_and_nothing_is_lost(make):
    """RabbitMQ is shared, so it is not restarted: every connection to the test's vhost is force-closed
    with `rabbitmqctl close_all_connections --vhost`, which is what consumers and publishers see of a restart."""
    project = make("amqp", {"orders": {}}, {"orders": [pool()]})
    up = project.up()
    events = project.events()
    slow = events.publish("t.pool", {"sleep": 2}).id
    eventually(lambda: project.read("start", id=slow), 15)
    project.store.close_connections()
    after = events.publish("t.pool", {"n": 2}).id  # the publisher reconnects within publish_timeout
    eventually(lambda: project.read("done", id=after), 30)
    eventually(lambda: len(project.read("start", id=slow)) >= 2 and project.read("done", id=slow), 30)
    assert "connection lost" in up.output and "reconnected" in up.output


@pytest.mark.parametrize("kind", ["amqp", "redis"])
def test_publish_while_the_broker_is_down_fails_after_the_bounded_wait(make, kind):
    url = (f"amqp://guest:guest@127.0.0.1:{free_port()}/" if kind == "amqp"
           else f"redis://127.0.0.1:{free_port()}/0")
    project = make(kind, {"orders": {}}, {"orders": [pool()]}, events={"publish_timeout": 0.5}, url=url)
    events = project.events()
    began = time.monotonic()
    with pytest.raises(events.EventsUnavailable, match=r"^cannot publish t\.pool: events (broker|store) "
                                                       r"\S+ unavailable for 0\.5s: "):
        events.publish("t.pool", {})
    assert 0.4 <= time.monotonic() - began < 3
    result = run_cli("events", "publish", "t.pool", "{}", cwd=project.root)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("microkit: error: cannot publish t.pool: ")


def test_heartbeats_are_served_while_a_handler_is_slow(make):
    """With a 1 s heartbeat, a handler that takes 4 s would get its connection dropped if heartbeats waited
    for it; the event is handled once and acked."""
    vhost = Vhost()
    try:
        project = make("amqp", {"orders": {}}, {"orders": [pool()]}, url=vhost.url + "?heartbeat=1")
        up = project.up()
        event = project.events().publish("t.pool", {"sleep": 4})
        eventually(lambda: project.read("done", id=event.id), 20)
        time.sleep(1.5)  # a redelivery, if the connection had been dropped, would have had time to land
        assert len(project.read("start", id=event.id)) == 1
        assert "connection lost" not in up.output
    finally:
        vhost.delete()


@pytest.mark.parametrize("kind", KINDS)
def test_cli_publish_and_tail(make, kind):
    project = make(kind, {"orders": {}}, {"orders": [pool()]})
    import subprocess
    import sys

    tail = subprocess.Popen([sys.executable, "-m", "microkit.cli", "events", "tail", "t.pool", "-n", "1",
                             "--timeout", "20"], cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert "tailing t.pool" in tail.stderr.readline()
        published = run_cli("events", "publish", "t.pool", '{"order_id": 7}', cwd=project.root)
        assert published.returncode == 0
        out, _ = tail.communicate(timeout=20)
        shown = json.loads(out.splitlines()[0])
        assert shown["id"] == published.stdout.strip() and shown["payload"] == {"order_id": 7}
        assert shown["source"] == "cli"
    finally:
        tail.kill()
        tail.wait()
    bad = run_cli("events", "publish", "t.pool", "{nope", cwd=project.root)
    assert bad.returncode == 2 and bad.stderr.startswith("microkit: error: JSON: not valid JSON")
    wrong = run_cli("events", "publish", "bad type!", "{}", cwd=project.root)
    assert wrong.returncode == 2 and "bad event type 'bad type!'" in wrong.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_tail_shows_an_event_published_the_moment_it_is_ready(make, kind):
    """`events tail` says "tailing" once it is positioned (the stream ends read, the queue bound): before, it
    said so first, and an event published right after the line could land before the tail was in place
    and never be shown (a CI run timed out waiting for one on Redis)."""
    import subprocess
    import sys

    project = make(kind, {"orders": {}}, {"orders": [pool()]})
    run = subprocess.run([sys.executable, str(PROGRAMS / "tail_ready.py")], cwd=project.root, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout)
    assert len(facts["published"]) == 1 and facts["shown"] == facts["published"]


def test_handlers_module_that_fails_to_import_makes_the_consumers_fatal(make):
    project = make("embedded", {"orders": {}}, {"orders": [pool()]})
    (project.root / "orders_handlers.py").write_text("raise ImportError('no such thing')\n")
    up = project.up(ready=False)
    up.wait_for(r"FATAL: gave up after 3 failed boots", 20)
    assert "ImportError: no such thing" in up.output
    assert up.wait(10) == 1


def test_events_template_scaffolds_a_consumer_service_that_runs(tmp_path):
    import subprocess
    import sys

    from support.up import Up

    assert run_cli("new", "project", "demo", cwd=tmp_path).returncode == 0
    root = tmp_path / "demo"
    made = run_cli("new", "service", "mailer", "--template", "events", "--workers", "2", cwd=root)
    assert made.returncode == 0, made.stderr
    toml = (root / "microkit.toml").read_text()
    assert '[services.mailer]\nevents = "services.mailer.handlers"\nconsumers = 2\n' in toml
    assert not (root / "services" / "mailer" / "template.toml").exists()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "services"], cwd=root,
                           capture_output=True, text=True, timeout=120)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    up = Up(root)
    try:
        up.wait_for(r"^ready: mailer\.events \(2 consumers\)", 30)
        tail = subprocess.Popen([sys.executable, "-m", "microkit.cli", "events", "tail", "mailer.done", "-n", "1",
                                 "--timeout", "20"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            tail.stderr.readline()
            assert run_cli("events", "publish", "mailer.requested", '{"name": "ada"}', cwd=root).returncode == 0
            out, _ = tail.communicate(timeout=20)
            assert json.loads(out.splitlines()[0])["payload"]["name"] == "ada"
        finally:
            tail.kill()
            tail.wait()
        up.wait_for(r"^mailer\.events\.\d \| ada requested by cli", 10)
    finally:
        up.close()


def test_consumers_are_supervised_like_workers_status_reload_scale_and_graceful_stop(make):
    project = make("embedded", {"orders": {"consumers": 2, "graceful_timeout": 5}}, {"orders": [pool()]})
    up = project.up()
    assert up.wait_for(r"^ready: orders\.events \(2 consumers\)$").string

    def group() -> dict:
        return next(s for s in up.status()["supervisor"]["services"] if s["name"] == "orders.events")
    first = group()
    assert first["kind"] == "consumers" and [i["state"] for i in first["instances"]] == ["ready", "ready"]
    before = {i["pid"] for i in first["instances"]}
    reloaded = run_cli("reload", "orders", cwd=project.root)
    assert reloaded.returncode == 0 and "orders.events" in reloaded.stdout
    eventually(lambda: {i["pid"] for i in group()["instances"]}.isdisjoint(before)
               and [i["state"] for i in group()["instances"]] == ["ready", "ready"], 20)
    assert run_cli("scale", "orders.events=3", cwd=project.root).returncode == 0
    eventually(lambda: [i["state"] for i in group()["instances"]] == ["ready"] * 3, 20)
    event = project.events().publish("t.pool", {"sleep": 1.5})
    eventually(lambda: project.read("start", id=event.id), 10)
    up.signal(signal.SIGTERM)  # the running handler finishes before its consumer exits
    assert up.wait(20) == 0
    assert len(project.read("done", id=event.id)) == 1 and len(project.read("start", id=event.id)) == 1


def test_a_consumer_started_while_redis_is_down_subscribes_once_it_is_back(make, tmp_path):
    server = persistent_redis(tmp_path)
    try:
        project = make("redis", {"orders": {}}, {"orders": [pool()]}, url=server.url)
        up = project.up()
        up.wait_for(r"events store unavailable", 10)
        server.start()
        up.wait_for(r"events store redis://\S+ is back$", 15)
        event = project.events().publish("t.pool", {})
        eventually(lambda: project.read("done", id=event.id), 15)
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["amqp-quorum", "redis", "embedded"])
def test_an_event_that_keeps_killing_its_consumer_goes_to_the_dead_letters(make, kind):
    """Delivered more than max(retries + 1, 2) times without an ack: dead-lettered without running again. On
    RabbitMQ this needs quorum queues (`?queue_type=quorum`), which count deliveries."""
    url = None
    if kind == "amqp-quorum":
        vhost = Vhost()
        url = vhost.url + "?queue_type=quorum"
    project = make("amqp" if url else kind, {"orders": {}}, {"orders": [pool(retries=1)]}, url=url)
    try:
        project.up()
        event = project.events().publish("t.pool", {"sleep": 30})
        for attempt in range(2):
            row = eventually(lambda: [r for r in project.read("start", id=event.id)][attempt:], 20)[0]
            os.kill(row["pid"], signal.SIGKILL)
        eventually(lambda: event.id in run_cli("events", "dead", cwd=project.root).stdout, 30)
        assert len(project.read("start", id=event.id)) == 2
        letter = json.loads(run_cli("events", "dead", "--json", cwd=project.root).stdout)[0]
        assert letter["error"].startswith("delivered 3 times without an ack")
    finally:
        if url:
            project.close()
            vhost.delete()
