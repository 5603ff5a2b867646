#!/usr/bin/env python3
"""A moto server whose requests are applied one at a time.

Real DynamoDB is linearizable per item; moto's threaded server is not (its conditional writes
race: 12 clients racing a conditional write on one item over-granted in 1 of 20 trials). The
fleet-budget tests need the real semantics, so every WSGI request runs under one lock.

  moto_serial.py HOST PORT
"""

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

LOCK = threading.Lock()


def serialized(app):
    def wrapped(environ, start_response):
        with LOCK:
            # The whole body is produced under the lock, not only the call.
            return list(app(environ, start_response))

    return wrapped


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, serialized(app), threaded=True)


if __name__ == "__main__":
    main()
