"""The README stays true: CI runs the test command it gives, and its config reference lists every setting."""

import re

from support.cli import REPO
from microkit import config


def test_ci_runs_the_test_command_the_readme_gives():
    ci = (REPO / ".ci" / "run").read_text()
    command = re.search(r'^TEST_COMMAND="([^"]+)"$', ci, re.M).group(1)
    assert f"\n{command}\n" in (REPO / "README.md").read_text()


def keys(prefix, settings):
    """Every documented key path, nested tables included."""
    for setting in settings:
        if isinstance(setting.parse, config.Table):
            yield from keys(f"{prefix}.{setting.name}", setting.parse.settings)
        else:
            yield f"{prefix}.{setting.name}"


def test_config_reference_lists_every_setting():
    readme = (REPO / "README.md").read_text()
    sections = {"project": config.PROJECT, "registry": config.REGISTRY, "events": config.EVENTS, "gateway": config.GATEWAY,
                "services.NAME": config.SERVICE}
    missing = [key for section, settings in sections.items() for key in keys(section, settings)
               if f"| `{key}` |" not in readme]
    assert missing == [], f"not in the README's config reference: {missing}"
