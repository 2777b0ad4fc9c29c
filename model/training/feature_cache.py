"""Frozen-backbone outputs on disk, in shards that a killed run resumes from.

A cache part lives in a folder named by the hash of everything that decides its content (backbone
and its weights' checksum, preprocessing, input sizes, the photos and views, the synthesiser's
config): a cache made with another model or another preprocessing sits in another folder and is
never mixed in. Shards are written to a temporary name and renamed, so a shard is either whole or
absent; a run that dies (killed, disk full) loses at most the shard it was writing.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger("snap2shop.adapt")

CACHE_FORMAT = 1


class CacheError(RuntimeError):
    """The cache cannot be written or read; the message says what to do."""


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CachePart:
    """One kind of cached rows (say, the catalogue's feature maps), `shard_size` rows a shard."""

    def __init__(self, root: Path, name: str, fingerprint: dict, rows: int, shard_size: int) -> None:
        if rows < 0 or shard_size < 1:
            raise ValueError("rows must be >= 0 and shard_size >= 1")
        self.fingerprint = {"cache_format": CACHE_FORMAT, "part": name, "rows": rows,
                            "shard_size": shard_size} | fingerprint
        self.dir = Path(root) / f"{name}-{fingerprint_hash(self.fingerprint)}"
        self.rows, self.shard_size = rows, shard_size
        self.shards = (rows + shard_size - 1) // shard_size
        self._space_checked = False

    @classmethod
    def find(cls, root: Path, name: str, fingerprint: dict, rows: int) -> "CachePart | None":
        """A complete part of this content, whatever its shard size, or None; creates nothing."""
        for meta in sorted(Path(root).glob(f"{name}-*/cache.json")):
            try:
                found = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            shard_size = found.get("shard_size")
            if not isinstance(shard_size, int) or shard_size < 1:
                continue
            part = cls(root, name, fingerprint, rows, shard_size)
            if part.dir == meta.parent and part.complete():
                return part
        return None

    def open(self) -> "CachePart":
        """Create the folder (or check the one there): refuses a folder written for other content."""
        meta = self.dir / "cache.json"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if meta.exists():
                found = json.loads(meta.read_text(encoding="utf-8"))
                if found != json.loads(json.dumps(self.fingerprint, sort_keys=True, default=str)):
                    raise CacheError(f"{self.dir} holds a cache of other content; remove the folder")
            else:
                _write_atomic(meta, json.dumps(self.fingerprint, sort_keys=True, default=str, indent=1).encode())
        except json.JSONDecodeError:
            raise CacheError(f"{meta} is damaged; remove {self.dir} and run again") from None
        except OSError as exc:
            raise _cache_os_error(exc, self.dir) from None
        return self

    def shard_path(self, index: int) -> Path:
        return self.dir / f"shard-{index:05d}.npz"

    def shard_rows(self, index: int) -> range:
        return range(index * self.shard_size, min(self.rows, (index + 1) * self.shard_size))

    def missing(self) -> list[int]:
        return [i for i in range(self.shards) if not self.shard_path(i).is_file()]

    def complete(self) -> bool:
        return not self.missing()

    def write(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        expected = len(self.shard_rows(index))
        for key, value in arrays.items():
            if len(value) != expected:
                raise ValueError(f"shard {index}: {key} has {len(value)} rows, expected {expected}")
        tmp = self.shard_path(index).with_suffix(".partial")
        try:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(self.shard_path(index))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _cache_os_error(exc, self.dir) from None
        if not self._space_checked:
            self._space_checked = True
            self._warn_if_short_of_space(self.shard_path(index).stat().st_size)

    def _warn_if_short_of_space(self, shard_bytes: int) -> None:
        """Say at the first shard, not after an hour, when the rest of the part will not fit on the disk."""
        needed = shard_bytes * len(self.missing())
        free = shutil.disk_usage(self.dir).free
        if needed > free:
            log.warning("the cache %s needs about %.1f GB more for this part, but its disk has %.1f GB free: "
                        "the run will stop when it is full (finished shards are kept); free space or pass "
                        "--cache on another disk", self.dir, needed / 1e9, free / 1e9)

    def read(self, keys: Iterable[str], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The named arrays of every row (or of `rows`, sorted row numbers), shard by shard."""
        keys = list(keys)
        if not self.complete():
            raise CacheError(f"{self.dir} is incomplete ({len(self.missing())} shards missing)")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for index in range(self.shards):
            span = self.shard_rows(index)
            if rows is not None:
                local = rows[(rows >= span.start) & (rows < span.stop)] - span.start
                if not len(local):
                    continue
            try:
                with np.load(self.shard_path(index)) as shard:
                    for key in keys:
                        parts[key].append(shard[key] if rows is None else shard[key][local])
            except (OSError, ValueError, KeyError) as exc:
                raise CacheError(f"{self.shard_path(index)} is unreadable ({exc}); delete it and run again") from None
        return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def read_parts(parts: list[CachePart], keys: list[str]) -> dict[str, np.ndarray]:
    """The named arrays of every row of several parts, one after the other."""
    got = [part.read(keys) for part in parts]
    return {k: np.concatenate([g[k] for g in got]) for k in keys}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)


def _cache_os_error(exc: OSError, where: Path) -> CacheError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheError(f"the disk holding the cache {where} is full; free space (or pass --cache on "
                          f"another disk) and run again: finished shards are kept and the run resumes")
    return CacheError(f"cannot write the cache at {where}: {exc.strerror or exc}")
