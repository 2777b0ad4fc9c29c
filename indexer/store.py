"""Opening an index version: its manifest, metadata and vector store, checked against each other."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import IndexOpenError
from .layout import METADATA_FILE
from .manifest import Manifest, read_manifest
from .metadata import MetadataStore

if TYPE_CHECKING:
    from .stores import StoreConfig, VectorStore


@dataclass
class OpenedIndex:
    version_dir: Path
    manifest: Manifest
    store: "VectorStore"
    metadata: MetadataStore

    @property
    def faiss_index(self):
        """The FAISS index of a version in the FAISS store (tests and FAISS-only tools)."""
        index = getattr(self.store, "index", None)
        if index is None:
            raise AttributeError(f"{self.version_dir} is held in a {self.store.kind} store, not FAISS")
        return index

    @property
    def image_root(self) -> Path:
        """Where the catalogue was when the index was built: the default root of its photo paths."""
        return Path(self.manifest.catalog.image_root)

    def resolve_image_path(self, stored: str, root: Path | None = None) -> Path:
        """A stored photo path on disk. Photos under the catalogue root are stored relative to it, so
        `root` (the catalogue's folder now, when it has moved) re-points them; a photo that was
        outside the root is stored absolute and stays where it was."""
        path = Path(stored)
        return path if path.is_absolute() else (self.image_root if root is None else root) / path

    def close(self) -> None:
        self.store.close()
        self.metadata.close()


def open_index(index_dir: str | Path, store: "StoreConfig | None" = None, index_device: str = "cpu") -> OpenedIndex:
    """Load the live version, checking that its store, metadata and manifest agree with each other.

    `store` overrides where a Milvus store is reached; `index_device` places a FAISS index (service)."""
    from .stores import open_store

    version_dir, manifest = read_manifest(index_dir)
    metadata = MetadataStore(version_dir / METADATA_FILE)
    try:
        vectors = open_store(version_dir, manifest.store, metadata.vector_ids_where, store, index_device)
    except BaseException:
        metadata.close()
        raise
    opened = OpenedIndex(version_dir=version_dir, manifest=manifest, store=vectors, metadata=metadata)
    count, rows = vectors.count(), metadata.count_images()
    problem = None
    if vectors.dim != manifest.dim:
        problem = f"the {vectors.kind} store holds {vectors.dim}-dim vectors but the manifest says {manifest.dim}"
    elif count != rows or count != manifest.counts.vectors:
        problem = (f"{version_dir} is inconsistent: {count} vectors in the {vectors.kind} store, "
                   f"{rows} rows in metadata, {manifest.counts.vectors} in the manifest")
    if problem is not None:
        opened.close()
        raise IndexOpenError(problem)
    return opened
