"""qfarm's worker side: the Celery app and task, GPU pinning, the methods,
evaluation and the job runner."""
