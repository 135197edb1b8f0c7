"""The registry's modules import one way: the shared data types (Instance, Snapshot, ChangeFeed and the
view a Watcher reads) live in microkit/registry/contract.py, which imports none of the others."""

from __future__ import annotations

from unit.test_gateway_imports import _cycle, _graph


def test_registry_modules_have_no_import_cycle():
    graph = _graph("microkit.registry")
    # the package's __init__ re-exporting its modules is not a cycle of the modules themselves
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    assert _cycle(graph) is None


def test_the_shared_types_import_no_other_registry_module():
    assert _graph("microkit.registry")["microkit.registry.contract"] == set()
