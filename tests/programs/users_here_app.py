"""Answers "users here" on every path."""

def app(environ, start_response):
    body = b"users here"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
