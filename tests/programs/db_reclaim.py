"""A full pool takes back the connections that ended greenlets held."""

import sys, time
from gevent import monkey
monkey.patch_all()
import gevent
from microkit import db
database = db.connect(sys.argv[1] + "?max_connections=2&timeout=5")
leaks = [gevent.spawn(database.connect) for _ in range(2)]  # each ends holding its connection
gevent.joinall(leaks, raise_error=True)
started = time.monotonic()
database.connect()
assert time.monotonic() - started < 1, "a full pool took back what ended greenlets held"
assert database.execute_sql("SELECT 1").fetchone() == (1,)
database.close()
assert len(database._in_use) == 0
