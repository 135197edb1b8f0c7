"""The JWT algorithms the gateway verifies, pinned: a module of its own (stdlib only) so that the config loader
checks `gateway.auth.jwt.algorithms` against them without importing PyJWT, redis or gevent."""

ALLOWED_ALGORITHMS = ("HS256", "RS256", "ES256")
