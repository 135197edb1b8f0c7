"""`microkit new` through the real executable: what it writes, and that each refusal writes nothing."""

import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from support.cli import refused, run_cli, snapshot, tree
from microkit import config, scaffold
from microkit.errors import ScaffoldError


def test_new_project_layout(project):
    assert tree(project) == [".gitignore", "README.md", "microkit.toml", "services", "services/__init__.py"]
    conf = config.load(project / "microkit.toml")
    assert conf.project.name == "shop" and dict(conf.services) == {}
    assert "/data/" in (project / ".gitignore").read_text()
    assert not [p for p in project.parent.iterdir() if p.name.startswith(".microkit-new-")]


def test_new_service_writes_files_and_keeps_the_toml_comments(project):
    before = (project / "microkit.toml").read_text()
    result = run_cli("new", "service", "users", cwd=project)
    assert result.returncode == 0, result.stderr
    result = run_cli("new", "service", "orders", "--route", "/orders", "--workers", "2", cwd=project / "services")
    assert result.returncode == 0, result.stderr

    after = (project / "microkit.toml").read_text()
    assert after.startswith(before), "the existing text, comments included, is kept as it was"
    assert after[len(before):] == ('\n[services.users]\napp = "services.users.app:app"\nroute = "/users"\nworkers = 1\n'
                                   '\n[services.orders]\napp = "services.orders.app:app"\nroute = "/orders"\nworkers = 2\n')
    conf = config.load(project / "microkit.toml")
    assert (conf.services["orders"].route, conf.services["orders"].workers) == ("/orders", 2)
    assert {"services/users/app.py", "services/users/models.py", "services/users/tests/test_app.py",
            "services/users/README.md"} <= set(tree(project))
    app = (project / "services/users/app.py").read_text()
    assert 'os.environ.get("MICROKIT_ROUTE", "")' in app and "{{" not in app
    assert "class User(Model)" in (project / "services/users/models.py").read_text()


def test_generated_tests_pass_on_sqlite(project):
    assert run_cli("new", "service", "users", cwd=project).returncode == 0
    assert run_cli("new", "service", "order_items", cwd=project).returncode == 0
    run_generated_tests(project, {})
    assert not (project / "data").exists(), "the generated tests use a throwaway database"


def test_generated_tests_pass_on_postgresql(project, postgres_url):
    assert run_cli("new", "service", "users", cwd=project).returncode == 0
    run_generated_tests(project, {"MICROKIT_TEST_DATABASE_URL": postgres_url})  # a database per test on it


def test_generated_tests_pass_on_mariadb(project, mysql_url):
    assert run_cli("new", "service", "users", cwd=project).returncode == 0
    run_generated_tests(project, {"MICROKIT_TEST_DATABASE_URL": mysql_url})


def run_generated_tests(project: Path, env: dict) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")
               and not k.startswith("MICROKIT_")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "services"],
                            cwd=project, env={**environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["new", "service", "my-svc"], "service name 'my-svc' is not a Python identifier: use letters, digits and _ "
                                   "(e.g. 'my_svc')"),
    (["new", "service", "class"], "service name 'class' is a Python keyword"),
    (["new", "service", "json"], "service name 'json' would shadow the Python module 'json'"),
    (["new", "service", "gateway"], "service name 'gateway' is reserved for microkit's own process"),
    (["new", "service", "bottle"], "service name 'bottle' would shadow the Python module 'bottle'"),
    (["new", "service", "users"], "service 'users' already exists in microkit.toml"),
    (["new", "service", "people", "--route", "/users"],
     'microkit.toml: services.people.route: "/users" is already the route of services.users'),
    (["new", "service", "people", "--route", "people"], "--route: expected a path prefix like \"/users\""),
    (["new", "service", "people", "--workers", "0"], "Invalid value for '--workers'"),
    (["new", "service", "people", "--template", "nope"], "--template: unknown template 'nope' (built in: aiohttp, "),
    (["new", "service", "people", "--template", "./missing"], "--template: ./missing: no such folder"),
    (["new", "project", "shop"], "already exists; nothing was written"),
])
def test_refusals_leave_the_project_exactly_as_it_was(project, args, message):
    assert run_cli("new", "service", "users", cwd=project).returncode == 0
    cwd = project.parent if args[1] == "project" else project
    before = snapshot(project.parent)
    refused(run_cli(*args, cwd=cwd), message)
    assert snapshot(project.parent) == before


def test_existing_folder_of_the_service_is_refused(project):
    (project / "services" / "users").mkdir()
    (project / "services" / "users" / "mine.py").write_text("keep me\n")
    before = snapshot(project)
    refused(run_cli("new", "service", "users", cwd=project), "service 'users' already exists: services/users is there")
    assert snapshot(project) == before


def test_invalid_config_is_refused_before_anything_is_written(project):
    toml = project / "microkit.toml"
    toml.write_text(toml.read_text() + '\n[services.x]\napp = "x:app"\nworkers = "two"\n')
    before = snapshot(project)
    refused(run_cli("new", "service", "users", cwd=project),
            'microkit.toml: services.x.workers: expected an integer >= 1, got "two"')
    assert snapshot(project) == before


def test_outside_a_project(tmp_path):
    refused(run_cli("new", "service", "users", cwd=tmp_path), "no microkit.toml in")
    assert list(tmp_path.iterdir()) == []


def test_config_flag_and_environment(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_cli("new", "service", "users", "-c", str(project / "microkit.toml"), cwd=elsewhere).returncode == 0
    assert run_cli("new", "service", "orders", cwd=elsewhere,
                   env={"MICROKIT_CONFIG": str(project / "microkit.toml")}).returncode == 0
    assert set(config.load(project / "microkit.toml").services) == {"users", "orders"}
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name, message", [
    ("my shop", "project name 'my shop' is not a Python identifier"),
    ("for", "project name 'for' is a Python keyword"),
])
def test_bad_project_names(tmp_path, name, message):
    refused(run_cli("new", "project", name, cwd=tmp_path), message)
    assert list(tmp_path.iterdir()) == []


def test_user_template_folder(project, tmp_path):
    mine = tmp_path / "mytemplate"
    (mine / "pkg").mkdir(parents=True)
    (mine / "__init__.py").write_text("")
    (mine / "app.py").write_text('ROUTE = "{{ route }}"\n\ndef app(environ, start_response):\n'
                                 '    start_response("200 OK", [])\n    return [b"{{service}} of {{project}}"]\n')
    (mine / "pkg" / "{{service}}_notes.txt").write_text("{{model}}\n")
    (mine / "dot-env").write_text("NAME={{service}}\n")
    result = run_cli("new", "service", "payments", "--template", str(mine), cwd=project)
    assert result.returncode == 0, result.stderr
    service = project / "services" / "payments"
    assert (service / "app.py").read_text().startswith('ROUTE = "/payments"')
    assert (service / "pkg" / "payments_notes.txt").read_text() == "Payment\n"
    assert (service / ".env").read_text() == "NAME=payments\n"


def test_user_template_with_unknown_placeholder_writes_nothing(project, tmp_path):
    mine = tmp_path / "bad"
    mine.mkdir()
    (mine / "a.py").write_text("ok\n")
    (mine / "b.py").write_text("{{ nope }}\n")
    before = snapshot(project)
    refused(run_cli("new", "service", "payments", "--template", str(mine), cwd=project),
            "b.py: unknown placeholder {{nope}} (known: {{model}}, {{project}}, {{route}}, {{service}})")
    assert snapshot(project) == before


def test_a_failure_while_writing_rolls_back(project, monkeypatch):
    conf = config.load(project / "microkit.toml")
    plan = scaffold.plan_service(conf, "users")
    before = snapshot(project)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scaffold.os, "replace", broken_replace)
    with pytest.raises(OSError):
        scaffold.apply(plan, project)
    assert snapshot(project) == before
    assert sorted(p.name for p in project.iterdir()) == [".gitignore", "README.md", "microkit.toml", "services"]


def test_apply_refuses_an_existing_file(tmp_path):
    (tmp_path / "b.txt").write_text("mine")
    plan = scaffold.Plan((scaffold.File(PurePosixPath("a/a.txt"), b"new"), scaffold.File(PurePosixPath("b.txt"), b"")))
    with pytest.raises(ScaffoldError, match="b.txt already exists; nothing was written"):
        scaffold.apply(plan, tmp_path)
    assert snapshot(tmp_path) == {"b.txt": b"mine"}


@pytest.mark.parametrize("service, model", [
    ("users", "User"), ("order_items", "OrderItem"), ("status", "Status"), ("address", "Address"),
    ("news", "New"), ("box", "Box"),
])
def test_model_names(service, model):
    assert scaffold.model_name(service) == model


@pytest.mark.parametrize("args", [[], ["new"], ["new", "project"], ["new", "service"]])
def test_every_command_has_help(tmp_path, args):
    result = run_cli(*args, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_version_and_bad_usage(tmp_path):
    from microkit import __version__

    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"microkit {__version__}"
    refused(run_cli("frobnicate", cwd=tmp_path), "No such command 'frobnicate'")
    refused(run_cli("new", "project", cwd=tmp_path), "Missing argument 'NAME'")


def test_debug_shows_the_traceback(tmp_path):
    plain = run_cli("new", "service", "users", cwd=tmp_path)
    debug = run_cli("--debug", "new", "service", "users", cwd=tmp_path)
    env = run_cli("new", "service", "users", cwd=tmp_path, env={"MICROKIT_DEBUG": "1"})
    assert "Traceback" not in plain.stderr
    assert debug.returncode == env.returncode == 2
    assert "Traceback" in debug.stderr and "Traceback" in env.stderr
