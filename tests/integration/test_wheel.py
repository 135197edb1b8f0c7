"""A plain (non-editable) install from a built wheel can scaffold: the templates ship as package data.

Once per test run: build the wheel from a copy of the source, install it into a fresh venv, and run
`microkit new` and the generated tests from there.
"""

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from support.cli import REPO, run_cli

SOURCES = ["setup.py", "README.md", "microkit", "templates"]


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv with microkit installed from its wheel."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (REPO / name).is_dir() else {}))
    dist = work / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(dist), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    wheel = next(dist.glob("microkit-*.whl"))
    install = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[rest]",
                              "pytest"], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    return env_dir / "bin"


def test_wheel_install_scaffolds_a_project_whose_tests_pass(installed_wheel, tmp_path):
    microkit = str(installed_wheel / "microkit")
    assert run_cli("--version", cwd=tmp_path, executable=microkit).returncode == 0
    created = run_cli("new", "project", "shop", cwd=tmp_path, executable=microkit)
    assert created.returncode == 0, created.stderr
    project = tmp_path / "shop"
    assert (project / ".gitignore").is_file()
    listed = run_cli("new", "service", "--list", cwd=project, executable=microkit)
    assert {"rest", "soap", "aiohttp", "flask"} <= {line.split()[0] for line in listed.stdout.splitlines()}, listed
    assert "Bottle and peewee" in listed.stdout, "each template.toml ships in the wheel"
    added = run_cli("new", "service", "users", cwd=project, executable=microkit)
    assert added.returncode == 0, added.stderr
    tests = subprocess.run([str(installed_wheel / "pytest"), "-q", "-p", "no:cacheprovider", "services"],
                           cwd=project, capture_output=True, text=True, timeout=120)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "passed" in tests.stdout
