"""The template catalogue: `microkit new service --list`, `--dry-run`, and user templates with a template.toml."""

from pathlib import Path

import pytest

from support.cli import refused, run_cli, snapshot
from microkit import config, scaffold


def test_list_prints_every_builtin_template_on_one_line(tmp_path):
    result = run_cli("new", "service", "--list", cwd=tmp_path)  # works outside a project
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == scaffold.builtin_templates() and {"rest", "soap", "aiohttp", "flask"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in lines), "each template has a description"


def test_builtin_templates_describe_themselves_and_are_not_copied(project):
    described = {t.name: t.description for t in scaffold.catalogue()}
    for name in ("rest", "soap", "aiohttp", "flask"):
        assert described[name] and "no template.toml" not in described[name], name
    assert run_cli("new", "service", "users", cwd=project).returncode == 0
    assert not (project / "services" / "users" / "template.toml").exists()


def test_dry_run_prints_the_files_and_the_toml_change_and_writes_nothing(project):
    before = snapshot(project)
    result = run_cli("new", "service", "users", "--route", "/people", "--dry-run", cwd=project)
    assert result.returncode == 0, result.stderr
    assert snapshot(project) == before
    out = result.stdout
    assert "would create services/users/app.py" in out and "would create services/users/tests/test_app.py" in out
    assert "would change microkit.toml:" in out
    assert '+[services.users]\n+app = "services.users.app:app"\n+route = "/people"\n+workers = 1' in out
    assert out.rstrip().endswith("nothing was written (--dry-run)")


def test_dry_run_of_a_refused_service_is_refused_the_same_way(project):
    assert run_cli("new", "service", "users", cwd=project).returncode == 0
    refused(run_cli("new", "service", "users", "--dry-run", cwd=project), "service 'users' already exists")


def make_template(folder: Path, meta: str) -> Path:
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "server.py").write_text('GREETING = "{{greeting}}, {{service}}"\nPORT_VAR = "{{port_var}}"\n')
    (folder / "template.toml").write_text(meta)
    return folder


COMMAND_TEMPLATE = '''
description = "a program that greets"
[variables]
greeting = "hello"
port_var = "PORT"
[service]
command = "python -m services.{{service}}.server --port ${{port_var}}"
health = "/ping"
env = { GREETING = "{{greeting}}", DATABASE_URL = "sqlite:///data/{{service}}.db" }
'''


def test_a_template_without_template_toml_adds_an_app_table(project, tmp_path):
    mine = tmp_path / "bare"
    mine.mkdir()
    (mine / "app.py").write_text("app = None\n")
    assert run_cli("new", "service", "bare", "--template", str(mine), cwd=project).returncode == 0
    assert config.load(project / "microkit.toml").services["bare"].app == "services.bare.app:app"
    assert scaffold.load_template(str(mine)).description == "(no description: its folder has no template.toml)"


def test_user_template_with_template_toml_adds_a_command_table(project, tmp_path):
    mine = make_template(tmp_path / "greeter", COMMAND_TEMPLATE)
    result = run_cli("new", "service", "hello", "--template", str(mine), "--var", "greeting=hi there",
                     "--workers", "2", cwd=project)
    assert result.returncode == 0, result.stderr
    service = project / "services" / "hello"
    assert (service / "server.py").read_text() == 'GREETING = "hi there, hello"\nPORT_VAR = "PORT"\n'
    assert not (service / "template.toml").exists()
    conf = config.load(project / "microkit.toml").services["hello"]
    assert (conf.app, conf.command, conf.health) == (None, "python -m services.hello.server --port $PORT", "/ping")
    assert (conf.route, conf.workers) == ("/hello", 2)
    assert dict(conf.env) == {"GREETING": "hi there", "DATABASE_URL": "sqlite:///data/hello.db"}


@pytest.mark.parametrize("meta, args, message", [
    ("descripton = 'x'\n", [], "template.toml: descripton: unknown key (known: description, variables, service)"),
    ("[service]\nroute = '/x'\n", [], "template.toml: service.route: set by `microkit new service --route`"),
    ("[variables]\nservice = 'x'\n", [], "template.toml: variables.service: expected an identifier other than"),
    ("[variables]\ngreeting = 1\n", [], "template.toml: variables.greeting: expected a string default"),
    ("[variables]\ngreeting = 'a'\nport_var = 'PORT'\n", ["--var", "colour=red"],
     "--var colour: template 'bad' has no such variable (its variables: greeting, port_var)"),
    ("[variables]\ngreeting = 'a'\nport_var = 'PORT'\n", ["--var", "greeting"], "--var greeting: expected NAME=VALUE"),
    ("[variables]\ngreeting = 'a'\nport_var = 'PORT'\n[service]\nap = 'x:y'\n", [],
     "microkit.toml: services.people.ap: unknown key; did you mean \"app\"?"),
    ("[variables]\ngreeting = 'a'\nport_var = 'PORT'\n[service]\napp = '{{nope}}'\n", [],
     "template.toml: unknown placeholder {{nope}}"),
    ("this is not toml", [], "template.toml: invalid TOML"),
])
def test_bad_template_toml_is_one_line_and_writes_nothing(project, tmp_path, meta, args, message):
    mine = make_template(tmp_path / "bad", meta)
    before = snapshot(project)
    refused(run_cli("new", "service", "people", "--template", str(mine), *args, cwd=project), message)
    assert snapshot(project) == before


def test_missing_name_is_a_usage_error(project):
    refused(run_cli("new", "service", cwd=project), "missing NAME (or --list for the templates)")
