"""A Bottle app that does not route the health path: the worker answers it."""

import bottle

app = bottle.Bottle()


@app.get("/hello/<name>")
def hello(name):
    return {"hello": name}
