"""eventlet.wsgi.server with the same Flask app (embedded-mode shape)."""
import eventlet

eventlet.monkey_patch()

import sys  # noqa: E402

import eventlet.wsgi  # noqa: E402

from app_wsgi import app  # noqa: E402

port = int(sys.argv[1])
max_size = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
sock = eventlet.listen(("127.0.0.1", port), backlog=2048)
eventlet.wsgi.server(sock, app, max_size=max_size, log_output=False)
