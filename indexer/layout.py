"""An index folder holds immutable versions and a `current` symlink naming the live one.

    INDEX_DIR/current -> v-20261126T101500-3f2a
    INDEX_DIR/v-20261126T101500-3f2a/{index.faiss, metadata.sqlite, manifest.json}

A new version is written in a staging folder beside the others and published by replacing the
symlink with os.replace, which is atomic: a reader sees the old complete index or the new complete
one, never a half-written one, and a writer (build, add, remove) killed mid-way leaves `current`
untouched.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

# Called with a version or staging folder about to be deleted, to release what it holds elsewhere
# (a Milvus collection); the FAISS store keeps everything inside the folder.
Retire = Callable[[Path], None]

CURRENT = "current"
MANIFEST = "manifest.json"
FAISS_FILE = "index.faiss"
METADATA_FILE = "metadata.sqlite"
_STAGING_PREFIX = ".staging-"
_VERSION_PREFIX = "v-"
KEEP_PREVIOUS_VERSIONS = 1  # one old version stays, for rollback and for readers still on it


class IndexLayoutError(ValueError):
    """The folder is not a snap2shop index, or cannot become one."""


def resolve_version_dir(index_dir: str | Path) -> Path:
    """The folder holding the live version's files. Accepts an index folder or a version folder."""
    index_dir = Path(index_dir)
    if (index_dir / MANIFEST).is_file():
        return index_dir
    current = index_dir / CURRENT
    if current.is_symlink() or current.is_dir():
        target = current.resolve()
        if (target / MANIFEST).is_file():
            return target
        raise IndexLayoutError(f"{current} points to {target}, which holds no {MANIFEST}")
    if not index_dir.exists():
        raise IndexLayoutError(f"index folder {index_dir} does not exist")
    raise IndexLayoutError(f"{index_dir} is not a snap2shop index (no {CURRENT} link, no {MANIFEST})")


def require_index_folder(index_dir: Path) -> None:
    """Changing an index needs the folder holding `current`, not a version folder or a new one."""
    resolve_version_dir(index_dir)  # its errors say what is missing
    if not (index_dir / CURRENT).is_symlink():
        raise IndexLayoutError(f"{index_dir} is a version folder; give the index folder that holds its "
                               f"`{CURRENT}` link ({index_dir.parent})")


@contextlib.contextmanager
def writer_lock(index_dir: Path, retire: Retire | None = None) -> Iterator[None]:
    """One writer per index folder: a second one is refused rather than interleaved.

    Holding the lock, any staging folder left here belongs to a writer that died, so it goes.
    """
    check_index_dir(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexLayoutError(f"another process is writing {index_dir}; try again when it ends") from None
        _remove_abandoned_staging(index_dir, retire)
        yield


def check_index_dir(index_dir: Path) -> None:
    """Refuse, before writing anything there, a folder that holds something other than an index."""
    if index_dir.exists() and not index_dir.is_dir():
        raise IndexLayoutError(f"{index_dir} exists and is not a folder")
    if not index_dir.exists():
        return
    ours = all(p.name in (CURRENT, ".lock") or p.name.startswith((_VERSION_PREFIX, _STAGING_PREFIX, f".{CURRENT}-"))
               for p in index_dir.iterdir())
    if not ours:
        raise IndexLayoutError(
            f"{index_dir} exists and holds files that are not a snap2shop index; "
            f"choose an empty or new folder for --out"
        )


def new_staging_dir(index_dir: Path) -> Path:
    staging = index_dir / f"{_STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    staging.mkdir()
    return staging


@contextlib.contextmanager
def staged_version(index_dir: Path, retire: Retire | None = None) -> Iterator[Path]:
    """A staging folder for the next version, gone afterwards unless `publish` renamed it.

    It exists from the start of the write, so a writer killed at any point leaves it behind for the
    next writer to remove; one that fails or is interrupted in-process removes it itself.
    """
    staging = new_staging_dir(index_dir)
    try:
        yield staging
    finally:
        # After a successful publish the folder was renamed into a version, so nothing is left here.
        if staging.exists():
            if retire is not None:
                retire(staging)
            shutil.rmtree(staging, ignore_errors=True)


def publish(index_dir: Path, staging: Path, retire: Retire | None = None) -> Path:
    """Make the staged version live. Returns the version folder."""
    name = f"{_VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    version = index_dir / name
    _fsync_tree(staging)
    staging.rename(version)
    link_tmp = index_dir / f".{CURRENT}-{secrets.token_hex(3)}"
    os.symlink(name, link_tmp)
    os.replace(link_tmp, index_dir / CURRENT)
    _fsync_dir(index_dir)
    _remove_old_versions(index_dir, keep={name}, retire=retire)
    return version


def _remove_old_versions(index_dir: Path, keep: set[str], retire: Retire | None = None) -> None:
    versions = sorted((p for p in index_dir.iterdir() if p.name.startswith(_VERSION_PREFIX) and p.name not in keep),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    for old in versions[KEEP_PREVIOUS_VERSIONS:]:
        if retire is not None:
            retire(old)
        shutil.rmtree(old, ignore_errors=True)


def _remove_abandoned_staging(index_dir: Path, retire: Retire | None = None) -> None:
    for leftover in [*index_dir.glob(f"{_STAGING_PREFIX}*"), *index_dir.glob(f".{CURRENT}-*")]:
        if leftover.is_symlink() or leftover.is_file():
            leftover.unlink(missing_ok=True)
        else:
            if retire is not None:
                retire(leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
