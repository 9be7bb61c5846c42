"""Schema migrations (Alembic), run by `helyx serve` / `helyx worker` at start and by `helyx migrate`.

Several processes may start at once (the Procfile's web and worker): on PostgreSQL an advisory
lock makes them take turns, and the second finds nothing to do.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util.exc import CommandError
from sqlalchemy import Engine, text

_LOCK_ID = 0x48454C5958  # "HELYX"
_SCRIPTS = Path(__file__).with_name("migrations")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


class SchemaNewerThanRelease(RuntimeError):
    """The database was migrated by a newer release (this one is a roll-back): nothing to run."""

    def __init__(self, revision: str) -> None:
        super().__init__(f"This database's schema is at revision {revision}, newer than this release's "
                         f"{head_revision()}: a newer release migrated it. Run that release, or restore the "
                         "database from before its migration.")


def is_known(revision: str) -> bool:
    """Whether this release has the revision (an unknown one is a newer release's)."""
    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except (CommandError, ResolutionError):
        return False


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest schema."""
    config = _config()
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
            conn.commit()
        try:
            revision = MigrationContext.configure(conn).get_current_revision()
            if revision is not None and not is_known(revision):
                raise SchemaNewerThanRelease(revision)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.rollback()  # a failed migration left its transaction aborted: the unlock would fail in it
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
                conn.commit()


def is_current(engine: Engine) -> bool:
    """True when the database is at the newest revision."""
    return current_revision(engine) == head_revision()


def head_revision() -> str | None:
    """This release's newest schema revision."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision; None for a database without the schema."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def autogenerate(engine: Engine, message: str) -> None:
    """For developers: write a new revision from the difference between models and database."""
    config = _config()
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.revision(config, message=message, autogenerate=True)
