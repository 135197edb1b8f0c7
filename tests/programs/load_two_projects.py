"""Load the users service of each project given (their roots as arguments) in this one interpreter, as
in-process services of two projects in one pytest session are; print where each `services` came from."""

import sys
from pathlib import Path

from microkit.testing.inprocess import load_app

for root in sys.argv[1:]:
    load_app(Path(root), "services.users.app:app", {"DATABASE_URL": "sqlite:///:memory:"})
    print(sys.modules["services.users.app"].__file__, sys.modules["services"].__file__)
