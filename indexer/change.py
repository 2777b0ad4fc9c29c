"""A change to a published index (add, remove): the live version, and the next one being staged.

The writer lock is held throughout and the staging folder goes unless published (with any store it
wrote outside the folder, such as a Milvus collection), so a change that fails, is interrupted or
is killed leaves the live version as it was.
"""
from __future__ import annotations

import contextlib
import functools
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .layout import MANIFEST, METADATA_FILE, Retire, publish, require_index_folder, staged_version, writer_lock
from .metadata_edit import copy_for_edit, finish
from .manifest import Manifest, write_manifest
from .store import OpenedIndex, open_index
from .stores import StoreConfig, VectorStore, release_folder_store


@dataclass
class IndexChange:
    index_dir: Path
    staging: Path
    live: OpenedIndex
    metadata: sqlite3.Connection  # writable, on the staged copy of the live metadata
    retire: Retire
    staged_stores: list[VectorStore] = field(default_factory=list)

    def stage_store(self, kept_ids: np.ndarray | None = None) -> VectorStore:
        """The next version's vector store: the live vectors (to add to), or only `kept_ids`."""
        staged = self.live.store.stage_next(self.staging, kept_ids)
        self.staged_stores.append(staged)
        return staged

    def publish(self, store: VectorStore, manifest: Manifest, compact_metadata: bool = False) -> Path:
        """Write the staged version's files and make it live. Returns the version folder."""
        manifest = manifest.replace(store=store.persist(self.staging))
        finish(self.metadata, compact=compact_metadata)
        write_manifest(self.staging / MANIFEST, manifest)
        return publish(self.index_dir, self.staging, self.retire)


@contextlib.contextmanager
def change_index(index_dir: Path, store: StoreConfig | None = None) -> Iterator[IndexChange]:
    """`store` only says where the index's Milvus store is reached, if it has one."""
    index_dir = Path(index_dir)
    require_index_folder(index_dir)
    retire = functools.partial(release_folder_store, override=store)
    with writer_lock(index_dir, retire), staged_version(index_dir, retire) as staging:
        live = open_index(index_dir, store)  # refuses an inconsistent live version
        change = None
        try:
            with closing(copy_for_edit(live.version_dir / METADATA_FILE, staging / METADATA_FILE)) as metadata:
                change = IndexChange(index_dir=index_dir, staging=staging, live=live, metadata=metadata,
                                     retire=retire)
                yield change
        finally:
            for staged in (change.staged_stores if change is not None else []):
                staged.close()
            live.close()
