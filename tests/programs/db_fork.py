"""A peewee database from microkit.db, used before and after a fork: the child gets a connection of its
own (its own server-side id) and the parent keeps using its own."""

import gc, json, os, sys
from microkit import db
database = db.connect(sys.argv[1])
backend = "SELECT pg_backend_pid()" if sys.argv[1].startswith("postgres") else "SELECT CONNECTION_ID()"
database.connect()
parent = database.execute_sql(backend).fetchone()[0]
child = os.fork()
if child == 0:
    database.connect(reuse_if_open=True)
    mine = database.execute_sql(backend).fetchone()[0]
    database.close_all()
    print(json.dumps({"child": mine}), flush=True)
    gc.collect()
    sys.exit(0)  # a normal exit: inherited connections are released, and must say goodbye to /dev/null
os.waitpid(child, 0)
print(json.dumps({"parent": parent, "after": database.execute_sql(backend).fetchone()[0]}), flush=True)
