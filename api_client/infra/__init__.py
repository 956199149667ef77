"""The farm's state and where it lives: the job database (db/), artifact
stores (storage/), the broker (queue.py), and the two rules that move a job
between them when a worker is gone (liveness.py, lifecycle.py). Imports the
contract and the ground floor, never the application or the CLI."""
