"""The Redis registry under gevent: 50 concurrent readers, a heartbeat and a watcher in one process;
prints what each saw as JSON."""

from gevent import monkey
monkey.patch_all()
import json, sys, gevent
from microkit.registry import Heartbeat, Instance, RedisRegistry

registry = RedisRegistry(sys.argv[1], sys.argv[2])
heartbeat = Heartbeat(registry, interval=0.1).start()
watcher = registry.watch()
instance = registry.register(Instance("users", "127.0.0.1", 9001), ttl=0.3)
readers = [gevent.spawn(registry.instances, "users") for _ in range(50)]
gevent.joinall(readers, timeout=5, raise_error=True)
gevent.sleep(0.6)
print(json.dumps({
    "readers": [len(r.value) for r in readers],
    "watched": [i.instance_id for i in watcher.instances("users")],
    "alive": [i.instance_id for i in registry.instances("users")],
    "mine": instance.instance_id,
}))
registry.deregister(instance)
watcher.stop()
heartbeat.stop()
