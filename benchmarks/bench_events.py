"""Events through microkit beside the raw client doing the same work, on RabbitMQ and on Redis.

Run from the repository root: `python benchmarks/bench_events.py [--events 2000] [--paced 300] [--rounds 2]
[--brokers amqp,redis]`. For each broker and round, raw and microkit take turns (same machine, same time):
- a consumer process (gevent, prefetch 10, ack after the handler) is started and says when it is subscribed;
- this process publishes `--events` 1 KB events back to back, each confirmed (AMQP publisher confirms; XADD
  returning on Redis): throughput = events / (last handled - first published);
- then `--paced` events one every 2 ms: end-to-end latency (published -> handler called) p50 and p99;
- CPU per event of the publisher (this process) and of the consumer (from its first event on).
Raw AMQP is py-amqp (a confirm_publish connection; basic_consume with basic_qos and basic_ack in the
callback); raw Redis is redis-py XADD and XREADGROUP COUNT 10 BLOCK + XACK. AMQP runs in a vhost made for
the run (rabbitmqctl), Redis under a key prefix of its own; both are removed at the end.
Targets: microkit >= 0.8x the raw throughput, <= 1 ms added at p50.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

AMQP_BASE = os.environ.get("MICROKIT_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
REDIS = os.environ.get("MICROKIT_TEST_REDIS", "redis://127.0.0.1:6379/0")
PREFETCH = 10
PAD = "x" * 940  # with the envelope, about 1 KB on the wire
TYPE = "bench.t"


# The consumer side, in a subprocess: `bench_events.py consume SIDE URL NAMESPACE COUNT`.

def consume(side: str, url: str, namespace: str, count: int) -> None:
    from gevent import monkey
    monkey.patch_all()
    import gevent.event

    received: list[tuple[float, float, str]] = []
    done = gevent.event.Event()

    first_cpu: list[float] = []

    def record(sent: float, phase: str) -> None:
        if not received:
            first_cpu.append(time.process_time())
        received.append((time.time(), sent, phase))
        if len(received) >= count:
            done.set()

    if side == "microkit":
        from microkit import events
        from microkit.events.consumer import Consumer
        from microkit.events.settings import Settings

        settings = events.configure(Settings(url=url, namespace=namespace, source="bench", prefetch=PREFETCH))

        @events.handler(TYPE, retries=0)
        def handle(event) -> None:
            record(event.payload["t"], event.payload["phase"])

        consumer = Consumer(settings, "bench", events.handlers(), "bench.1")
        consumer.start()
        print("ready", flush=True)
        done.wait()
        consumer.stop(5)
    elif url.startswith("amqp"):
        import amqp
        from microkit.events.backends.amqp import connection_options

        conn = amqp.Connection(**dict(connection_options(url), heartbeat=0))
        conn.connect()
        channel = conn.channel()
        channel.exchange_declare("raw.events", "topic", durable=True, auto_delete=False)
        channel.queue_declare("raw.q", durable=True, auto_delete=False)
        channel.queue_bind("raw.q", "raw.events", TYPE)
        channel.basic_qos(0, PREFETCH, False)

        def on_message(message) -> None:
            payload = json.loads(message.body)["payload"]
            record(payload["t"], payload["phase"])
            channel.basic_ack(message.delivery_tag)
        channel.basic_consume("raw.q", callback=on_message)
        print("ready", flush=True)
        while not done.is_set():
            conn.drain_events(timeout=5)
        conn.close()
    else:
        import redis

        client = redis.Redis.from_url(url)
        stream = f"{namespace}:raw"
        try:
            client.xgroup_create(stream, "g", id="$", mkstream=True)
        except redis.ResponseError:
            pass
        print("ready", flush=True)
        while not done.is_set():
            for _, rows in client.xreadgroup("g", "c1", {stream: ">"}, count=PREFETCH, block=1000) or []:
                for entry_id, fields in rows:
                    payload = json.loads(fields[b"e"])["payload"]
                    record(payload["t"], payload["phase"])
                    client.xack(stream, "g", entry_id)
    print(json.dumps({"received": received, "cpu": time.process_time() - first_cpu[0]}), flush=True)


# The publishing side, in this process.

class RawPublisher:
    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        if url.startswith("amqp"):
            import amqp
            from microkit.events.backends.amqp import connection_options

            self.conn = amqp.Connection(**dict(connection_options(url), heartbeat=0), confirm_publish=True)
            self.conn.connect()
            self.channel = self.conn.channel()
            self.channel.exchange_declare("raw.events", "topic", durable=True, auto_delete=False)
        else:
            import redis

            self.client = redis.Redis.from_url(url)
            self.stream = f"{namespace}:raw"

    def publish(self, payload: dict) -> None:
        body = json.dumps({"type": TYPE, "id": uuid.uuid4().hex, "payload": payload}).encode()
        if self.url.startswith("amqp"):
            import amqp

            self.channel.basic_publish(amqp.Message(body, delivery_mode=2, content_type="application/json"),
                                       exchange="raw.events", routing_key=TYPE)
        else:
            self.client.xadd(self.stream, {"e": body}, maxlen=1_000_000, approximate=True)

    def close(self) -> None:
        if self.url.startswith("amqp"):
            self.conn.close()
        else:
            self.client.close()


class MicrokitPublisher:
    def __init__(self, url: str, namespace: str) -> None:
        from microkit import events
        from microkit.events.settings import Settings

        self.events = events
        events.configure(Settings(url=url, namespace=namespace, source="bench"))

    def publish(self, payload: dict) -> None:
        self.events.publish(TYPE, payload)

    def close(self) -> None:
        self.events.backend().close()


def run_side(side: str, url: str, namespace: str, events: int, paced: int) -> dict:
    consumer = subprocess.Popen([sys.executable, __file__, "consume", side, url, namespace, str(events + paced)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert consumer.stdout.readline().strip() == "ready"
        publisher = (MicrokitPublisher if side == "microkit" else RawPublisher)(url, namespace)
        cpu_before = time.process_time()
        start = time.time()
        for _ in range(events):
            publisher.publish({"t": time.time(), "phase": "burst", "pad": PAD})
        published = time.time()
        time.sleep(0.5)
        for _ in range(paced):
            publisher.publish({"t": time.time(), "phase": "paced", "pad": PAD})
            time.sleep(0.002)
        publisher.close()
        publish_cpu = time.process_time() - cpu_before
        out, _ = consumer.communicate(timeout=120)
    finally:
        consumer.kill()
        consumer.wait()
    report = json.loads(out.strip().splitlines()[-1])
    received = report["received"]
    burst_end = max(r for r, _, phase in received if phase == "burst")
    latencies = sorted((r - s) * 1000 for r, s, phase in received if phase == "paced")
    return {"throughput": events / (burst_end - start), "publish_rate": events / (published - start),
            "p50": statistics.median(latencies), "p99": latencies[int(len(latencies) * 0.99) - 1],
            "publish_us": publish_cpu / (events + paced) * 1e6, "consume_us": report["cpu"] / (events + paced - 1) * 1e6}


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--paced", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--brokers", default="amqp,redis")
    options = parser.parse_args()
    for broker in options.brokers.split(","):
        namespace = f"mkbench{uuid.uuid4().hex[:8]}"
        if broker == "amqp":
            rabbitmqctl("add_vhost", namespace)
            rabbitmqctl("set_permissions", "-p", namespace, "guest", ".*", ".*", ".*")
            url = AMQP_BASE.rstrip("/") + "/" + namespace
        else:
            url = REDIS
        try:
            results: dict[str, list[dict]] = {"raw": [], "microkit": []}
            for round_ in range(options.rounds):
                for side in ("raw", "microkit"):
                    result = run_side(side, url, namespace, options.events, options.paced)
                    results[side].append(result)
                    print(f"{broker} round {round_ + 1} {side:8}: {result['throughput']:8.0f} events/s "
                          f"(publishing {result['publish_rate']:.0f}/s), p50 {result['p50']:.2f} ms, "
                          f"p99 {result['p99']:.2f} ms; CPU per event: publisher {result['publish_us']:.0f} us, "
                          f"consumer {result['consume_us']:.0f} us", file=sys.stderr)
            raw, mk = ({k: statistics.median(r[k] for r in results[s])
                        for k in ("throughput", "p50", "p99", "publish_us", "consume_us")} for s in ("raw", "microkit"))
            ratios = [m["throughput"] / r["throughput"] for r, m in zip(results["raw"], results["microkit"])]
            print(f"{broker}: raw {raw['throughput']:.0f} events/s p50 {raw['p50']:.2f} ms p99 {raw['p99']:.2f} ms | "
                  f"microkit {mk['throughput']:.0f} events/s p50 {mk['p50']:.2f} ms p99 {mk['p99']:.2f} ms | "
                  f"throughput {statistics.median(ratios):.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios)}), "
                  f"p50 added {mk['p50'] - raw['p50']:+.2f} ms; CPU per event publish {raw['publish_us']:.0f} vs "
                  f"{mk['publish_us']:.0f} us, consume {raw['consume_us']:.0f} vs {mk['consume_us']:.0f} us")
        finally:
            if broker == "amqp":
                rabbitmqctl("delete_vhost", namespace)
            else:
                import redis

                client = redis.Redis.from_url(REDIS)
                keys = list(client.scan_iter(match=f"{namespace}:*"))
                if keys:
                    client.delete(*keys)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "consume":
        consume(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
