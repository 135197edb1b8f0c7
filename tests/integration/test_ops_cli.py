"""Issue 10, item 9: the CLI's rough edges, each through the real executable."""

from __future__ import annotations

import re
import signal

from support.cli import REPO, run_cli
from support.up import Up, make_project


def test_bare_groups_print_their_help_on_stdout_and_exit_0(tmp_path):
    for args, first in (((), "Usage: microkit [OPTIONS]"), (("new",), "Usage: microkit new"),
                        (("keys",), "Usage: microkit keys")):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "" and result.stdout.startswith(first), result.stdout
        assert "(see `" not in result.stdout


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    result = run_cli("status", "--debug", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "no such option" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("microkit: error: no microkit.toml")


def test_new_project_refuses_an_existing_non_empty_folder(tmp_path):
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "notes.txt").write_text("mine")
    result = run_cli("new", "project", "shop", cwd=tmp_path)
    assert result.returncode == 2 and "shop/ already exists; nothing was written" in result.stderr
    assert [p.name for p in (tmp_path / "shop").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert run_cli("new", "project", "empty", cwd=tmp_path).returncode == 0


def test_new_project_and_new_service_agree_on_names(tmp_path):
    project = run_cli("new", "project", "json", cwd=tmp_path)
    assert project.returncode == 2 and "would shadow the Python module 'json'" in project.stderr
    assert list(tmp_path.iterdir()) == []
    assert run_cli("new", "project", "shop", cwd=tmp_path).returncode == 0
    service = run_cli("new", "service", "json", cwd=tmp_path / "shop")
    assert service.returncode == 2 and "would shadow the Python module 'json'" in service.stderr


def test_a_refused_name_is_not_offered_back(tmp_path):
    result = run_cli("new", "project", "ümlaut", cwd=tmp_path)
    assert result.returncode == 2
    assert "'ümlaut'" in result.stderr and "(e.g. 'ümlaut')" not in result.stderr
    assert "(e.g. '_mlaut')" in result.stderr
    result = run_cli("new", "project", "my-shop", cwd=tmp_path)
    assert "(e.g. 'my_shop')" in result.stderr


def test_keys_revoke_takes_the_whole_key_and_says_when_already_revoked(tmp_path):
    root = make_project(tmp_path / "proj", {"plain": {"app": "services.plain.app:app"}}, {"plain": "plain_app.py"})
    created = run_cli("keys", "create", "ci", cwd=root)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    revoked = run_cli("keys", "revoke", key, cwd=root)
    assert revoked.returncode == 0 and f"revoked key {key[3:14]} (ci)" in revoked.stdout, revoked.stderr
    again = run_cli("keys", "revoke", key[3:14], cwd=root)
    assert again.returncode == 0 and "was already revoked" in again.stdout
    bad = run_cli("keys", "revoke", "mk_short", cwd=root)
    assert bad.returncode == 2 and "not a whole microkit key" in bad.stderr


def test_unknown_service_names_in_reload_and_scale_exit_2(tmp_path):
    root = make_project(tmp_path / "proj", {"plain": {"app": "services.plain.app:app"}}, {"plain": "plain_app.py"})
    up = Up(root)
    try:
        up.ready()
        for args in (("reload", "nope"), ("scale", "nope=2")):
            result = run_cli(*args, cwd=root)
            assert result.returncode == 2, (args, result.stderr)
            assert "no running service named 'nope'" in result.stderr
        up.signal(signal.SIGTERM)
        assert up.wait() == 0
    finally:
        up.close()


def test_log_prefixes_are_aligned_from_the_first_line(tmp_path):
    root = make_project(tmp_path / "proj", {"a": {"app": "services.a.app:app"},
                                            "longer_name": {"app": "services.longer_name.app:app", "workers": 2}},
                        {"a": "plain_app.py", "longer_name": "plain_app.py"})
    up = Up(root)
    try:
        up.ready()
        up.signal(signal.SIGTERM)
        assert up.wait() == 0
    finally:
        up.close()
    prefixed = [line for line in up.lines if " | " in line]
    columns = {line.index(" | ") for line in prefixed}
    assert len(columns) == 1, "\n".join(prefixed)


def test_readme_token_example_calls_a_jwt_route():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Get a token for an API key", 1)[1].split("\n### ", 1)[0]
    called = re.findall(r'Authorization: Bearer eyJ\.\.\."? http://127\.0\.0\.1:8000(/\w+)', section)
    assert called, section
    jwt_block = readme.split("### Protect a route with JWTs", 1)[1].split("\n### ", 1)[0]
    jwt_routes = re.findall(r'route = "(/\w+)"\nauth = "jwt"', jwt_block)
    assert set(called) <= set(jwt_routes), (called, jwt_routes)


def test_new_commands_have_help(tmp_path):
    for command in ("check", "logs", "stop"):
        result = run_cli(command, "--help", cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith(f"Usage: microkit {command}"), result.stderr
    up_help = run_cli("up", "--help", cwd=tmp_path).stdout
    for option in ("--detach", "--env-file", "--log-format", "--log-level", "--log-health"):
        assert option in up_help
    for command in ("reload", "scale"):
        assert "--no-wait" in run_cli(command, "--help", cwd=tmp_path).stdout
