"""An index version's manifest (manifest.json): what it was built from and how, read and written here."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import IndexOpenError
from .layout import MANIFEST, resolve_version_dir


INDEX_FORMAT = "snap2shop-index"


INDEX_FORMAT_VERSION = 2  # 2: the manifest names its vector store (Milvus); FAISS versions still write 1


def write_manifest(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(index_dir: str | Path) -> tuple[Path, dict]:
    version_dir = resolve_version_dir(index_dir)
    try:
        manifest = json.loads((version_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexOpenError(f"{version_dir / MANIFEST} is unreadable or not JSON: {exc}") from None
    if manifest.get("format") != INDEX_FORMAT:
        raise IndexOpenError(f"{version_dir / MANIFEST} is not a snap2shop index manifest")
    if manifest.get("format_version", 0) > INDEX_FORMAT_VERSION:
        raise IndexOpenError(f"{version_dir} was written by a newer snap2shop (format {manifest['format_version']})")
    return version_dir, manifest


def format_version_for(store_kind: str) -> int:
    """FAISS versions keep format 1, which earlier releases read; a Milvus version needs this one."""
    return 1 if store_kind == "faiss" else INDEX_FORMAT_VERSION
