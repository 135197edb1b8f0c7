"""The dashboard's endpoints and the sampler that feeds them (see the package docstring)."""

from __future__ import annotations

import html
import json
import logging
import os
import socket
import time
from pathlib import Path

import bottle

from microkit.dashboard.board import board_for
from microkit.dashboard.sessions import COOKIE, Sessions, cleared
from microkit.dashboard.stats import History
from microkit.gateway.checks import Call, checks_for
from microkit.gateway.policy import Policy
from microkit.gateway.routing import split_target
from microkit.gateway.security import Denied, Rate, RequestInfo
from microkit.metrics.gateway import SERVICE, gateway_layout
from microkit.metrics.scrape import summed, supervisor_status

STATIC = Path(__file__).parent / "static"
SAMPLE_INTERVAL = 1.0
RESTART_SHOWN = 6.0  # seconds a restarted worker's service shows as "restarting"
MAX_LOGIN_BODY = 4096
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".html": "text/html; charset=utf-8", ".png": "image/png"}
SECURITY_HEADERS = (("Cache-Control", "no-store"), ("X-Frame-Options", "DENY"),
                    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'"),
                    ("Referrer-Policy", "no-referrer"), ("X-Content-Type-Options", "nosniff"))
log = logging.getLogger("microkit.dashboard")


class Dashboard:
    """One gateway worker's dashboard: sampler, board, history, and the views."""

    def __init__(self, gateway, slot: int, owner: int) -> None:
        config = gateway.config
        self.gateway = gateway
        self.root = config.root
        self.keys = [(r.prefix, r.service) for r in gateway.routes]
        self.layout = getattr(gateway, "meter", None) and gateway.meter.layout or gateway_layout(self.keys)
        self.history = History(self.layout)
        self.sessions = Sessions(self.root)
        self.board = board_for(self.root, config.registry.url, config.project.name)
        self.host = socket.gethostname()
        self.name = f"{self.host}-{owner}-{slot}"
        self.owner, self.slot = owner, slot
        self.entries: list[dict] = []
        self.all_entries: list[dict] = []
        token = config.gateway.auth.token  # logins are limited per IP like POST /auth/token: each guess costs
        self.login_checks = checks_for(Policy(rate=Rate.parse(token.rate_limit, token.rate_limit_burst), rate_by="ip",
                                              limit_scope="/__microkit/login"), gateway.security)
        self.restarts: dict[tuple[str, str], int] = {}
        self.restarted_at: dict[tuple[str, str], float] = {}
        self._failing = False

    # The sampler.

    def sample(self) -> None:
        now = time.time()
        meter = getattr(self.gateway, "meter", None)
        status = supervisor_status(self.root)
        entry = {"host": self.host, "owner": self.owner, "slot": self.slot, "pid": os.getpid(), "time": now,
                 "digest": self.layout.digest, "totals": summed(self.root, SERVICE, self.layout, self.owner),
                 "recent": list(meter.recent) if meter is not None else [],
                 "supervisor": status and {"pid": status.get("pid"), "services": status.get("services", [])}}
        self.board.publish(self.name, entry)
        entries = self.board.entries()
        newest: dict[tuple[str, int], dict] = {}
        for item in entries:
            key = (item.get("host"), item.get("owner"))
            if item.get("digest") == self.layout.digest and (key not in newest or item["time"] > newest[key]["time"]):
                newest[key] = item
        combined = [0.0] * self.layout.cells
        for item in newest.values():
            combined = [a + b for a, b in zip(combined, item["totals"])]
        self.history.add(time.monotonic(), combined)
        for item in newest.values():
            for group in (item.get("supervisor") or {}).get("services", []):
                key = (item["host"], group["name"])
                count = group.get("restarts", 0)
                if count > self.restarts.get(key, count):
                    self.restarted_at[key] = now
                self.restarts[key] = count
        self.entries = list(newest.values())
        self.all_entries = entries

    def start(self) -> None:
        import gevent

        def loop() -> None:
            while True:
                try:
                    self.sample()
                    self._failing = False
                except Exception as exc:  # a registry outage must not end the sampler
                    if not self._failing:
                        log.warning("dashboard: cannot sample: %s", exc)
                    self._failing = True
                gevent.sleep(SAMPLE_INTERVAL)
        gevent.spawn(loop)

    # What the page shows.

    def state(self) -> dict:
        now = time.time()
        snapshot = self.gateway.last_snapshot
        healthy = {route.service: {u.key for u in route.balancer.healthy()} for route in self.gateway.routes}
        groups: dict[str, list[tuple[str, dict]]] = {}
        for item in self.entries:
            for group in (item.get("supervisor") or {}).get("services", []):
                groups.setdefault(group["name"], []).append((item["host"], group))
        services = []
        for name, service in self.gateway.config.services.items():
            found = groups.get(name, []) + groups.get(f"{name}.events", [])  # its workers, and its consumers
            workers, restarts, kills, errors, states = [], 0, 0, [], []
            for host, group in found:
                restarts += group.get("restarts", 0)
                kills += group.get("blocked_kills", 0)
                if group.get("error"):
                    errors.append(group["error"])
                states.append(group.get("state"))
                workers += [{"host": host, **w} for w in group.get("instances", [])]
                if now - self.restarted_at.get((host, name), 0.0) < RESTART_SHOWN:
                    states.append("restarting")
            instances = [{"id": i.instance_id, "host": i.host, "port": i.port, "hostname": i.hostname,
                          "pid": i.pid, "age": round(now - i.started_at, 1),
                          "healthy": i.instance_id in healthy.get(name, set())}
                         for i in snapshot.get(name, [])]
            if "FATAL" in states:
                shown = "FATAL"
            elif "restarting" in states or (restarts and any(s not in ("running", None) for s in states)):
                shown = "restarting"
            elif states and all(s == "running" for s in states) or (not states and any(i["healthy"] for i in instances)):
                shown = "healthy"
            else:
                shown = "starting" if states else "no instances"
            services.append({"name": name, "route": service.route, "state": shown, "restarts": restarts,
                             "blocked_kills": kills, "error": errors[0] if errors else None,
                             "instances": instances, "workers": workers})
        recent = sorted((dict(zip(("time", "route", "service", "method", "status", "request_id", "trace_id"), r),
                              host=item.get("host")) for item in self.all_entries
                         for r in item.get("recent", [])), key=lambda r: -r["time"])[:30]
        routes = self.history.routes(self.keys)
        return {"time": now, "project": self.gateway.config.project.name,
                "gateways": [{"host": e["host"], "pid": e["pid"], "age": round(now - e["time"], 1)}
                             for e in self.all_entries],
                "registry_age": round(min(self.gateway.snapshot_age(), 1e9), 1),
                "services": services, "routes": routes, "recent": recent,
                "refusals": {"auth": sum(r["auth_refusals"] for r in routes),
                             "ratelimit": sum(r["ratelimit_refusals"] for r in routes)}}

    # Sessions.

    def session_ok(self, environ: dict) -> bool:
        cookie = bottle.BaseRequest(environ).cookies.get(COOKIE)
        key_id = self.sessions.key_id(cookie)
        return key_id is not None and self.gateway.security.apikeys.active(key_id)

    def login(self) -> bytes:
        request = bottle.request
        secure = request.environ.get("wsgi.url_scheme") == "https"
        try:
            length = int(request.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = MAX_LOGIN_BODY + 1
        if length > MAX_LOGIN_BODY:
            return self.login_page("The form is too large.", 413)
        raw = request.environ["microkit.request"]
        call = Call(raw, *split_target(raw.target))
        try:
            for check in self.login_checks:
                check(call)
        except Denied as denied:
            return self.login_page("Too many attempts: wait a minute.", denied.status)
        key = request.forms.getunicode("key") or ""
        info = RequestInfo("POST", "/__microkit/login", {"x-api-key": [key.strip()]} if key.strip() else {},
                           request.environ["REMOTE_ADDR"])
        try:
            identity = self.gateway.security.apikeys.authenticate(info, {self.gateway.config.gateway.auth.admin_scope})
        except Denied as denied:
            message = ("That key is not valid." if denied.status == 401 else
                       "That key lacks the admin scope." if denied.status == 403 else denied.message)
            return self.login_page(message, denied.status)
        bottle.response.status = 303
        bottle.response.set_header("Location", "/__microkit/")
        bottle.response.set_header("Set-Cookie", self.sessions.header(self.sessions.make(identity.key_id), secure))
        return b""

    def logout(self) -> bytes:
        bottle.response.status = 303
        bottle.response.set_header("Location", "/__microkit/")
        bottle.response.set_header("Set-Cookie", cleared(bottle.request.environ.get("wsgi.url_scheme") == "https"))
        return b""

    def login_page(self, message: str = "", status: int = 200) -> bytes:
        page = (STATIC / "login.html").read_text()
        notice = f'<p class="refused" role="alert">{html.escape(message)}</p>' if message else ""
        bottle.response.status = status
        _headers("text/html; charset=utf-8")
        return page.replace("<!--message-->", notice).encode()

    def page(self, name: str):
        def view() -> bytes:
            if not self.session_ok(bottle.request.environ):
                return self.login_page()
            _headers(TYPES[".html"])
            return (STATIC / name).read_bytes()
        return view

    def data(self) -> bytes:
        if not self.session_ok(bottle.request.environ):
            return self.gateway._error(401, "log in at /__microkit/ first")
        _headers("application/json")
        return json.dumps(self.state()).encode()


def _headers(content_type: str) -> None:
    bottle.response.content_type = content_type
    for name, value in SECURITY_HEADERS:
        bottle.response.set_header(name, value)


def static(name: str):
    def view() -> bytes:
        path = STATIC / name
        _headers(TYPES[path.suffix])
        return path.read_bytes()
    return view


def install(gateway, slot: int, owner: int) -> Dashboard:
    from microkit.gateway.app import ADMIN_PREFIX
    board = Dashboard(gateway, slot, owner)
    gateway.session_ok = board.session_ok
    app = gateway.app
    app.route(f"{ADMIN_PREFIX}/", "GET", board.page("index.html"))
    app.route(ADMIN_PREFIX, "GET", lambda: bottle.redirect(f"{ADMIN_PREFIX}/", 303))
    app.route(f"{ADMIN_PREFIX}/api", "GET", board.page("api.html"))
    app.route(f"{ADMIN_PREFIX}/login", "POST", board.login)
    app.route(f"{ADMIN_PREFIX}/logout", "POST", board.logout)
    app.route(f"{ADMIN_PREFIX}/dashboard.json", "GET", board.data)
    for name in ("dashboard.js", "dashboard.css", "api.js"):
        app.route(f"{ADMIN_PREFIX}/static/{name}", "GET", static(name))
    board.start()
    return board
