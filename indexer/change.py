"""A change to a published index (add, remove): the live version, and the next one being staged.

The writer lock is held throughout and the staging folder goes unless published, so a change that
fails, is interrupted or is killed leaves the live version as it was.
"""
from __future__ import annotations

import contextlib
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .layout import FAISS_FILE, MANIFEST, METADATA_FILE, publish, require_index_folder, staged_version, writer_lock
from .metadata_edit import copy_for_edit, finish
from .store import OpenedIndex, open_index, write_faiss, write_manifest


@dataclass
class IndexChange:
    index_dir: Path
    staging: Path
    live: OpenedIndex  # its faiss_index is an in-memory copy, free to modify
    metadata: sqlite3.Connection  # writable, on the staged copy of the live metadata

    def publish(self, faiss_index, manifest: dict, compact_metadata: bool = False) -> Path:
        """Write the staged version's files and make it live. Returns the version folder."""
        write_faiss(faiss_index, self.staging / FAISS_FILE)
        finish(self.metadata, compact=compact_metadata)
        write_manifest(self.staging / MANIFEST, manifest)
        return publish(self.index_dir, self.staging)


@contextlib.contextmanager
def change_index(index_dir: Path) -> Iterator[IndexChange]:
    index_dir = Path(index_dir)
    require_index_folder(index_dir)
    with writer_lock(index_dir), staged_version(index_dir) as staging:
        live = open_index(index_dir)  # refuses an inconsistent live version rather than build on it
        with closing(live.metadata), \
                closing(copy_for_edit(live.version_dir / METADATA_FILE, staging / METADATA_FILE)) as metadata:
            yield IndexChange(index_dir=index_dir, staging=staging, live=live, metadata=metadata)
