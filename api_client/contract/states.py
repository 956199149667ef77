"""A job's lifecycle: its states, and the stages of a running job. One enum
each, used by the database, the runner, the engines and the CLI."""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Stage(str, enum.Enum):
    """The stages of a running job, in order."""

    LOADING = "loading"  # fetch and inspect the model
    CALIBRATING = "calibrating"  # build the calibration windows
    QUANTIZING = "quantizing"  # the library's work: load, quantize, save
    EVALUATING = "evaluating"  # the artifact uploads meanwhile
    UPLOADING = "uploading"  # the rest of the upload, then the manifest

    @classmethod
    def of(cls, calibrated: bool) -> list[Stage]:
        """The stages a job of a calibrated (or uncalibrated) method passes."""
        return [s for s in cls if calibrated or s is not cls.CALIBRATING]
