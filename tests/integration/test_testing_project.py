"""microkit.testing's per-test copy of a project made with the real CLI, and in-process services of two
such projects in one interpreter."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib

import pytest

from microkit.errors import ConfigError
from microkit.testing.project import TestProject
from support.cli import PROGRAMS, run_cli, snapshot


@pytest.fixture
def project_folder(tmp_path):
    assert run_cli("new", "project", "shop", cwd=tmp_path).returncode == 0
    root = tmp_path / "shop"
    assert run_cli("new", "service", "users", cwd=root).returncode == 0
    toml = root / "microkit.toml"
    toml.write_text(toml.read_text().replace('[services.users]\n', '[services.users]\nlisten = "0.0.0.0:8123"\n'
                                             'advertise = "users.example"\n'))
    return root


def test_the_copy_has_its_own_name_folder_and_ports_and_links_the_code(project_folder, tmp_path):
    first = TestProject(project_folder / "microkit.toml", tmp_path / "a", None)
    second = TestProject(project_folder / "microkit.toml", tmp_path / "b", "redis://127.0.0.1:6379/3")
    written = tomllib.loads(first.path.read_text())
    assert first.namespace != second.namespace and first.namespace.startswith("shop_t")
    assert written["project"]["name"] == first.namespace and "registry" not in written
    assert written["gateway"]["listen"] == "127.0.0.1:0"
    assert written["services"]["users"]["listen"] == "127.0.0.1:0" and "advertise" not in written["services"]["users"]
    assert tomllib.loads(second.path.read_text())["registry"] == {"url": "redis://127.0.0.1:6379/3"}
    assert (first.root / "services").resolve() == (project_folder / "services").resolve()
    assert not (first.root / ".microkit").exists() and not (first.root / "data").exists()
    assert first.registry.path == first.root / ".microkit" / "registry.db"
    assert (project_folder / "microkit.toml").read_text().count("8123") == 1  # the project is untouched


def test_overrides_are_written_and_checked(project_folder, tmp_path):
    project = TestProject(project_folder / "microkit.toml", tmp_path / "a", None)
    conf = project.write({"users": {"workers": 3, "env": {"DATABASE_URL": "sqlite:///x.db"}}})
    assert conf.services["users"].workers == 3 and conf.services["users"].env["DATABASE_URL"] == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="services.users.workers: expected an integer >= 1"):
        project.write({"users": {"workers": 0}})


def test_two_projects_with_a_services_package_in_one_session(tmp_path):
    """In-process services of two projects in one pytest process: each imports its own `services`."""
    roots = []
    for project in ("one", "two"):
        (tmp_path / project).mkdir()
        assert run_cli("new", "project", "shop", cwd=tmp_path / project).returncode == 0
        assert run_cli("new", "service", "users", cwd=tmp_path / project / "shop").returncode == 0
        roots.append(tmp_path / project / "shop")
    lines = subprocess.run([sys.executable, str(PROGRAMS / "load_two_projects.py"), *map(str, roots)],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    assert all(path.startswith(str(roots[0])) for path in lines[0].split())
    assert all(path.startswith(str(roots[1])) for path in lines[1].split())


def test_removing_the_copy_leaves_the_project_alone(project_folder, tmp_path):
    (project_folder / "logs").mkdir()
    (project_folder / "logs" / "app.log").write_text("mine")
    before = snapshot(project_folder)
    project = TestProject(project_folder / "microkit.toml", tmp_path / "copy", None)
    project.write({"users": {"workers": 2}})
    assert (project.root / "logs").is_symlink() and not (project.own / "microkit.toml.tmp").exists()
    shutil.rmtree(project.root)
    assert snapshot(project_folder) == before
