"""Compare groups: one row for the group, its members are jobs with its
`group_id`. The group and every member row are written in one transaction,
so a group is never half there."""

from __future__ import annotations

from sqlalchemy import select

from api_client.errors import JobNotFound
from api_client.infra.db.database import Database
from api_client.infra.db.models import Job, JobEvent, JobGroup, utcnow
from api_client.redaction import redact

PREFIX = "g"


def create(db: Database, group: JobGroup, members: list[Job], message: str) -> None:
    now = utcnow()
    group.created_at = now
    with db.session() as s:
        s.add(group)
        for job in members:
            job.created_at = job.updated_at = now
            job.group_id = group.id
            s.add(job)
        s.flush()
        for job in members:
            s.add(JobEvent(job_id=job.id, at=now, state=job.state, stage=None, message=redact(message)))


def delete(db: Database, group_id: str) -> None:
    with db.session() as s:
        for job in s.scalars(select(Job).where(Job.group_id == group_id)):
            s.delete(job)
        group = s.get(JobGroup, group_id)
        if group is not None:
            s.delete(group)


def get(db: Database, ref: str) -> JobGroup | None:
    """The group whose id is `ref` or starts with it; None if no group does."""
    with db.session() as s:
        group = s.get(JobGroup, ref)
        if group is not None or not ref.startswith(PREFIX) or len(ref) < 4:
            return group
        found = s.scalars(select(JobGroup).where(JobGroup.id.startswith(ref, autoescape=True)).limit(2)).all()
    return found[0] if len(found) == 1 else None


def require(db: Database, ref: str) -> JobGroup:
    group = get(db, ref)
    if group is None:
        raise JobNotFound(f"no compare group {ref!r}")
    return group


def members(db: Database, group_id: str) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job).where(Job.group_id == group_id).order_by(Job.created_at, Job.id)))
