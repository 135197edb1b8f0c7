"""Governance for the gateway's own endpoints (admin views, POST /auth/token), which Bottle serves.

One Bottle plugin runs the same checks as the proxy path (microkit/gateway/checks.py), built from the
`Policy` a Bottle route carries in `route.config["microkit.policy"]`; a refusal is answered with the
gateway's JSON error. Proxied routes never reach Bottle (microkit/gateway/handler.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bottle

from microkit.gateway.checks import Answered, Call, checks_for
from microkit.gateway.policy import Security
from microkit.gateway.routing import split_target
from microkit.gateway.security import Denied

POLICY_KEY = "microkit.policy"

ErrorAnswer = Callable[[int, str, tuple[tuple[str, str], ...]], bytes]


def _pairs(lines: list[bytes]) -> list[tuple[str, str]]:
    pairs = []
    for line in lines:
        name, _, value = line.decode("latin-1").rstrip("\r\n").partition(": ")
        pairs.append((name, value))
    return pairs


class PolicyPlugin:
    """Runs a route's checks (CORS, auth, rate limit) before its callback; headers they add go out
    with the answer, refusals included."""

    api = 2
    name = "microkit.policy"

    def __init__(self, security: Security, answer: ErrorAnswer) -> None:
        self.security = security
        self.answer = answer

    def apply(self, callback: Callable, route: bottle.Route) -> Callable:
        policy = route.config.get(POLICY_KEY)
        checks = checks_for(policy, self.security) if policy is not None else ()
        if not checks:
            return callback

        def policy_wrapper(*args: Any, **kwargs: Any) -> Any:
            request = bottle.request.environ["microkit.request"]
            path, query = split_target(request.target)
            call = Call(request, path, query)
            response = bottle.response
            try:
                for check in checks:
                    check(call)
            except Denied as denied:
                result = self.answer(denied.status, denied.message, denied.headers)
            except Answered as answered:
                response.status = answered.status
                for name, value in answered.headers:
                    response.set_header(name, value)
                result = b""
            else:
                result = callback(*args, **kwargs)
            for name, value in _pairs(call.answer_headers()):
                response.set_header(name, value)
            return result
        return policy_wrapper
