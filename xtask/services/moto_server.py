"""moto server, one request at a time.

moto's in-memory backends take no locks, and `moto_server` serves every
request on its own thread: two UpdateItem calls on the same item race, and one
`ADD` can be lost. Real DynamoDB applies writes to an item atomically, and
Murmur's fenced batch writes rely on it (two lanes may add to the same row at
once). Serving the requests under one lock gives moto that atomicity back.

Usage: python moto_server.py HOST PORT
"""

import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

LOCK = threading.Lock()


def serialized(app):
    def call(environ, start_response):
        with LOCK:
            # The whole response is produced under the lock.
            return list(app(environ, start_response))

    return call


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, serialized(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
