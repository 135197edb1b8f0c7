"""The tiny Bottle JSON app every benchmark serves."""

import bottle

app = bottle.Bottle()


@app.get("/")
def index() -> dict:
    """One small JSON object."""
    return {"hello": "world", "n": 1}
