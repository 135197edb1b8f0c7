"""The dashboard at /__microkit/ (issue 14): services and instances, per-route traffic updating live,
worker restarts and FATAL services, recent errors, refusals; for every gateway sharing the registry.

Plain HTML, CSS and one small script (static/), served by the gateway; the page polls
/__microkit/dashboard.json. Access needs an API key with the admin scope, given once on a login
page and then kept as a session cookie (sessions.py). Every gateway worker samples its host's
figures once a second and leaves them on the board (board.py), so any worker's page shows all.
"""
