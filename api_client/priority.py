"""How `--priority` reaches the broker, for the client that sends a job
(queue.py) and for the Celery settings that make a worker honour it
(celery_config.py). A module of its own, below both: celery_config imports
it at the top, and queue.py imports celery_config when it builds an app, so
neither may hold it without the two importing each other."""

from __future__ import annotations

# --priority → the message's priority. On Redis, kombu keeps a list per
# priority step (celery_config: 0, 3, 6, 9) and a worker pops the lowest
# number first; within a step, the order of submission holds.
PRIORITIES = {"high": 0, "normal": 3, "low": 9}
PRIORITY_STEPS = (0, 3, 6, 9)  # celery_config's broker_transport_options
