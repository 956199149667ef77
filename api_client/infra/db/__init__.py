"""The SQL record of every job: its row, its events, worker heartbeats, and
the engine to reach them."""

from api_client.infra.db import groups, jobs, publications, workers
from api_client.infra.db.database import Database
from api_client.infra.db.models import Job, JobEvent, JobState, Stage

__all__ = ["Database", "Job", "JobEvent", "JobState", "Stage", "groups", "jobs", "publications", "workers"]
