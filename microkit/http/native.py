"""The compiled hot path (microkit/http/_speedups.c), or None: then the engine runs in pure Python.

It is None when the extension was not built (pip builds it when a C compiler is present, and installs
microkit without it otherwise) or when the environment sets MICROKIT_PURE_PYTHON=1, which the tests
use to run the engine's checks against both paths.
"""

import os

if os.environ.get("MICROKIT_PURE_PYTHON") == "1":
    speedups = None
else:
    try:
        from microkit.http import _speedups as speedups
    except ImportError:
        speedups = None
