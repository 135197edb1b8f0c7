"""Gateway security under the real `microkit up` on the embedded registry: API keys made with the CLI
(SQLite store), the in-process limiter, admin endpoints, token exchange, and what reaches the logs."""

from __future__ import annotations

import json
import signal

from support.cli import run_cli
from support.up import Up, make_project, request


SECURITY = """
[gateway.auth]
admin_scope = "ops"
[gateway.auth.jwt]
algorithms = ["HS256"]
secret_env = "MKTEST_UP_SECRET"
"""


def test_keys_limits_admin_and_redacted_logs_under_microkit_up(tmp_path, monkeypatch):
    monkeypatch.setenv("MKTEST_UP_SECRET", "t" * 40)
    root = make_project(tmp_path / "proj", {"users": {"app": "services.users.app:app", "route": "/users",
                                                      "auth": "apikey", "rate_limit": "8/min"}},
                        {"users": "routed_app.py"})
    (root / "microkit.toml").write_text((root / "microkit.toml").read_text() + SECURITY)
    created = run_cli("keys", "create", "ops", "--scope", "ops", cwd=root)
    assert created.returncode == 0, created.stderr
    admin = created.stdout.strip()
    user = run_cli("keys", "create", "app", cwd=root).stdout.strip()
    assert admin.startswith("mk_") and user.startswith("mk_") and admin != user

    up = Up(root, gateway=True)
    try:
        gateway = up.ready()["gateway"]
        assert request(gateway, "GET", "/users/pid")[0] == 401
        status, headers, _ = request(gateway, "GET", "/users/pid", {"X-API-Key": user})
        assert status == 200 and headers["ratelimit-limit"] == "8"

        status, _, body = request(gateway, "POST", "/auth/token", {"X-API-Key": user})
        token = json.loads(body)["access_token"]
        assert status == 200 and token.count(".") == 2
        assert request(gateway, "GET", f"/users/pid?access_token={token}&api_key={user}", {"X-API-Key": user})[0] == 200

        for path in ("/__microkit/routes", "/__microkit/instances"):
            assert request(gateway, "GET", path)[0] == 401
            assert request(gateway, "GET", path, {"X-API-Key": user})[0] == 403
            assert request(gateway, "GET", path, {"X-API-Key": admin})[0] == 200
        assert request(gateway, "GET", "/__microkit/health")[0] == 200

        statuses = [request(gateway, "GET", f"/users/pid?n={i}", {"X-API-Key": user})[0] for i in range(8)]
        assert statuses.count(200) == 6 and statuses[-1] == 429, statuses
        status, _, _ = request(gateway, "GET", "/users/pid?final=1", {"Authorization": f"ApiKey {user}"})
        up.signal(signal.SIGTERM)
        assert up.wait(20) == 0
    finally:
        up.close()
    output = up.output
    assert "GET /users/pid?access_token=[redacted]&api_key=[redacted] 200" in output
    assert "GET /users/pid?final=1 429" in output, "the last access line is flushed at stop"
    for secret in (admin, user, token):
        assert secret not in output
    listed = run_cli("keys", "list", cwd=root)
    assert listed.returncode == 0 and "ops" in listed.stdout and admin not in listed.stdout
