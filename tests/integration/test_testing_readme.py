"""The README's "Testing your services" examples pass as they are written, against the demo shop."""

from __future__ import annotations

import re

import pytest

from support.cli import REPO


def blocks(language: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Testing your services\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


@pytest.fixture
def run(pytester, monkeypatch):
    for name in ("MICROKIT_CONFIG", "MICROKIT_REGISTRY_URL", "DATABASE_URL", "MICROKIT_TEST_REGISTRY_URL",
                 "MICROKIT_TEST_DATABASE_URL", "MICROKIT_TEST_MODE"):
        monkeypatch.delenv(name, raising=False)

    def run(source: str, config):
        pytester.makepyfile(test_readme_example=source)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--microkit-config", str(config), timeout=240)

    return run


def test_the_shop_example(run):
    first = blocks("python")[0]
    result = run(first, REPO / "microkit.toml")
    result.assert_outcomes(passed=first.count("\ndef test_") + first.startswith("def test_"))


def test_the_secured_route_example(run, tmp_path):
    [settings] = blocks("toml")
    gateway_part, service_part = settings.split("[services.orders]\n")
    lines = "".join(line + "\n" for line in service_part.splitlines() if line and not line.startswith("#"))
    shop = (REPO / "microkit.toml").read_text().replace('root = "examples/shop"', f'root = "{REPO / "examples/shop"}"')
    assert "[services.orders]\n" in shop
    (tmp_path / "microkit.toml").write_text(shop.replace("[services.orders]\n", "[services.orders]\n" + lines)
                                            + "\n" + gateway_part)
    result = run(blocks("python")[1], tmp_path / "microkit.toml")
    result.assert_outcomes(passed=1)
