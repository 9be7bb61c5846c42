"""What a command that serves requests or runs jobs checks before it starts, so a bad catalog or an
unusable storage directory is one line on stderr and exit status 2: not a traceback from deep in
the app's import, nor a worker that boots fine and then fails every job."""

from __future__ import annotations

import tempfile

from common.catalog import Catalog, load_catalog
from common.settings import Settings
from common.storage import LocalStorage


class StorageUnusable(Exception):
    """HELYX_STORAGE_DIR cannot be created or written to."""


def check(settings: Settings) -> Catalog:
    """The catalog. CatalogError for a catalog that does not load; StorageUnusable for a storage
    directory this process cannot write (result files are written there by the workers and read
    by the API)."""
    catalog = load_catalog(settings)
    try:
        root = LocalStorage(settings.storage_dir).root
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        reason = "a file is in the way: not a directory" if isinstance(exc, FileExistsError) else exc.strerror or exc
        raise StorageUnusable(f"HELYX_STORAGE_DIR {settings.storage_dir}: {reason}") from None
    return catalog
