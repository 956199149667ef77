"""Where a job's artifact was published (`qfarm publish`): one row per
publish that changed the hub repo."""

from __future__ import annotations

from sqlalchemy import select

from api_client.infra.db.database import Database
from api_client.infra.db.models import Publication, utcnow


def add(db: Database, publication: Publication) -> None:
    publication.published_at = utcnow()
    with db.session() as s:
        s.add(publication)


def of_job(db: Database, job_id: str) -> list[Publication]:
    """The job's publications, oldest first."""
    with db.session() as s:
        return list(s.scalars(select(Publication).where(Publication.job_id == job_id).order_by(Publication.id)))


def latest(db: Database, job_id: str, endpoint: str, repo: str) -> Publication | None:
    """The job's last publication to `repo` at `endpoint`."""
    with db.session() as s:
        return s.scalars(select(Publication).where(Publication.job_id == job_id, Publication.endpoint == endpoint,
                                                   Publication.repo == repo).order_by(Publication.id.desc())).first()
