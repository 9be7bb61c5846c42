"""The job and file reads name their columns (prepared statements must not use `*`): the lists
must stay the tables' whole column sets, or a poll would miss a field a migration added."""

from __future__ import annotations

from common.jobs import submit, views
from common.models import Job, StoredFile


def _names(columns: str) -> list[str]:
    return [c.strip() for c in columns.split(",")]


def test_the_named_columns_are_every_column_of_jobs_and_files() -> None:
    assert sorted(_names(submit.JOB_COLUMNS)) == sorted(c.name for c in Job.__table__.columns)  # type: ignore[attr-defined]
    assert sorted(_names(views._FILE_COLUMNS)) == sorted(c.name for c in StoredFile.__table__.columns)  # type: ignore[attr-defined]
