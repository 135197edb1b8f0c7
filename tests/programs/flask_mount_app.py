"""A Flask app written for a mount point (werkzeug's DispatcherMiddleware): its routes are relative,
and the URLs it builds come from SCRIPT_NAME. $MOUNT_NAME names it in its answers."""

import os

from flask import Flask, jsonify, request, url_for

NAME = os.environ.get("MOUNT_NAME", "site")
app = Flask(NAME)


@app.get("/")
def index():
    return jsonify(app=NAME, script_root=request.script_root, path=request.path, index=url_for("index"),
                   item=url_for("item", number=7), url=request.url.split("//", 1)[1].split("/", 1)[1])


@app.get("/<int:number>")
def item(number):
    return jsonify(app=NAME, number=number, script_root=request.script_root, path=request.path,
                   here=url_for("item", number=number), index=url_for("index"))
