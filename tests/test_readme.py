"""The README stays true: CI runs the test command it gives, and its config reference lists every setting."""

import re

from helpers import REPO
from microkit import config


def test_ci_runs_the_test_command_the_readme_gives():
    ci = (REPO / ".ci" / "run").read_text()
    command = re.search(r'^TEST_COMMAND="([^"]+)"$', ci, re.M).group(1)
    assert f"\n{command}\n" in (REPO / "README.md").read_text()


def test_config_reference_lists_every_setting():
    readme = (REPO / "README.md").read_text()
    sections = {"project": config.PROJECT, "registry": config.REGISTRY, "gateway": config.GATEWAY,
                "services.NAME": config.SERVICE}
    for section, settings in sections.items():
        for setting in settings:
            assert f"| `{section}.{setting.name}` |" in readme, f"{section}.{setting.name} is not in the README"
