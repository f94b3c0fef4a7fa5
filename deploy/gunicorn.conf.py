"""gunicorn settings for a flask_callbot receiver: ``gunicorn -c deploy/gunicorn.conf.py APP``.

Threaded workers (gthread), so that clients that are slow or hostile cannot take the workers
away from the vendor: a connection that sends nothing waits in the worker's poller, not in a
thread (gunicorn gives it a thread for at most 5 s, then parks it), and a client that stalls
its body holds one thread of many until ``CALLBOT_BODY_TIMEOUT`` (10 s) ends the read. Sync
workers (gunicorn's default) are held whole by each such connection: eight of them, or a few
hundred idle connections, leave nothing for the vendor (see the README, "Slow clients").

Every value can be overridden on the command line or with the environment variables below.
Measured with ``python benchmarks/bench_slow_clients.py``.
"""

import os

bind = os.environ.get("CALLBOT_BIND", "127.0.0.1:8000")
worker_class = "gthread"
# Two cores: 4 processes. Callbacks spend most of their time in the store, not the CPU.
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
# Threads per worker: each request being read or handled holds one.
threads = int(os.environ.get("CALLBOT_THREADS", "128"))
# Connections a worker keeps open at once (idle ones in its poller); past that it stops
# accepting and the kernel's backlog holds the rest.
worker_connections = 1000
backlog = 2048
# Seconds a kept-alive (or parked) connection may stay idle before it is closed.
keepalive = 75
# A worker that stops answering the arbiter for this long is restarted.
timeout = 30
graceful_timeout = 30
# Requests are small: refuse oversized request lines and headers early.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
