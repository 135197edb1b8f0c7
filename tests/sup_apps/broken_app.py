"""An app that cannot be imported."""

import no_such_module_for_microkit_tests  # noqa: F401

app = None
