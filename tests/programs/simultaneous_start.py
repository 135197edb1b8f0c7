"""Imports the service's models (rest or flask template, argv[1]) from the project in the current folder,
says ready, and creates the tables when a line arrives on stdin: several at once race for the schema."""

import os, sys
sys.path.insert(0, os.getcwd())
if sys.argv[1] == "rest":
    from services.users import models
    models.init_db()
    start = models.create_tables
else:
    from services.accounts import models
    engine = models.make_engine()
    start = lambda: models.create_tables(engine)
print("ready", flush=True)
for line in sys.stdin:  # one line: start now
    try:
        start()
        print("ok", flush=True)
    except Exception as exc:
        print(f"failed: {type(exc).__name__}: {exc}".replace(chr(10), " "), flush=True)
