"""The Milvus vector store: one collection per index version, on a Milvus server or in Milvus Lite.

`--milvus-uri http://host:19530` reaches a Milvus standalone or cluster; a URI ending in `.db` is a
Milvus Lite file, embedded in the process (pymilvus + milvus-lite). The same code serves both, with
two Lite limits respected here: one process per Lite file (a second one gets a clear error instead
of waiting), and no IVF_PQ or DISKANN in Lite (it accepts them, fails to build them in the
background and falls back to brute force, so they are refused).

A collection holds the vector id (primary key), the embedding and the photo's category, so a
category filter runs inside Milvus as the expression `category == "..."`.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import secrets
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import IndexBuildError, IndexOpenError, StoreUnavailableError
from .base import StoreConfig, StoreHits, VectorStore, write_staged_marker
from .index_choice import IndexChoice

if TYPE_CHECKING:
    from ..manifest import Manifest

log = logging.getLogger("snap2shop.indexer")

PRIMARY_KEY, VECTOR_FIELD, CATEGORY_FIELD = "vector_id", "embedding", "category"
MAX_CATEGORY_CHARS = 1024
MAX_TOPK = 16384  # Milvus' limit on one search's limit
MAX_HNSW_EF = 32768
HNSW_BUILD_EF = 200  # efConstruction: Milvus' documented middle ground between build time and recall
FAISS_DEFAULT_EF = 16  # FAISS' efSearch default, so both stores explore an HNSW graph alike
INSERT_BYTES = 4 << 20  # rows per insert call: well under gRPC's 64 MB message limit
LITE_BROKEN = ("IVF_PQ", "DISKANN")
_IVF = re.compile(r"IVF(\d+)(?:_HNSW\d+)?,(Flat|SQ8|PQ(\d+)(?:x\d+)?)")
_HNSW = re.compile(r"HNSW(\d+)(?:,Flat)?")
# A Lite file is one process's: count this process's open stores per file, to release it after the last.
_lite_open: dict[str, int] = {}
_lite_lock = threading.Lock()  # a hot reload opens and the garbage collector closes from other threads


def is_lite(uri: str) -> bool:
    return uri.endswith(".db")


def canonical_uri(uri: str) -> str:
    """Lite files by absolute path, so a manifest written here names the same file from anywhere."""
    return str(Path(uri).expanduser().resolve()) if is_lite(uri) else uri


def milvus_index_for(choice: IndexChoice, uri: str | None) -> tuple[str, dict]:
    """The Milvus index type and build parameters matching a FAISS factory string."""
    factory = choice.factory
    if factory == "Flat":
        kind, params = "FLAT", {}
    elif (m := _HNSW.fullmatch(factory)) is not None:
        kind, params = "HNSW", {"M": int(m[1]), "efConstruction": HNSW_BUILD_EF}
    elif (m := _IVF.fullmatch(factory)) is not None:
        kind = {"Flat": "IVF_FLAT", "SQ8": "IVF_SQ8"}.get(m[2], "IVF_PQ")
        params = {"nlist": int(m[1])} | ({"m": int(m[3]), "nbits": 8} if kind == "IVF_PQ" else {})
    else:
        raise IndexBuildError(f"the Milvus store cannot build {factory!r}: it takes Flat, HNSW<M>, IVF<n>,Flat, "
                              f"IVF<n>,SQ8 or IVF<n>,PQ<m>")
    if uri and is_lite(uri) and kind in LITE_BROKEN:
        raise IndexBuildError(f"Milvus Lite accepts {kind} but does not build it (searches silently fall back to "
                              f"brute force); use Flat, HNSW32, IVF<n>,Flat or IVF<n>,SQ8 with a .db file, or a "
                              f"Milvus server for {kind}")
    return kind, params


def connect(uri: str):
    """A MilvusClient for `uri`, or a StoreUnavailableError that says what to do."""
    try:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException
    except ImportError:
        raise StoreUnavailableError("the Milvus store needs pymilvus (and milvus-lite for .db files): "
                                    "pip install -r requirements-milvus.txt") from None
    # pymilvus logs every failed call at ERROR before raising it; the exception carries it to our message.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    uri = canonical_uri(uri)
    if is_lite(uri):
        # Lite's in-process server logs a traceback for a call it does not implement (AllocTimestamp,
        # from create_index) and answers it anyway; the index is built all the same.
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    if is_lite(uri) and not Path(uri).parent.is_dir():
        raise StoreUnavailableError(f"Milvus Lite file {uri}: folder {Path(uri).parent} does not exist")
    try:
        client = MilvusClient(uri=uri)
    except MilvusException as exc:
        if is_lite(uri):
            raise StoreUnavailableError(
                f"cannot open Milvus Lite file {uri} ({exc.message}): Milvus Lite allows one process per file, "
                f"so an indexer and a running service cannot share one; stop the process that has it open, or "
                f"use a Milvus server (--milvus-uri http://host:19530), which many processes can share") from None
        raise StoreUnavailableError(f"cannot reach Milvus at {uri}: {exc.message}") from None
    except ImportError:
        raise StoreUnavailableError(f"{uri} is a Milvus Lite file, which needs milvus-lite: "
                                    f"pip install -r requirements-milvus.txt") from None
    if is_lite(uri):
        with _lite_lock:
            _lite_open[uri] = _lite_open.get(uri, 0) + 1
    return client


def disconnect(client, uri: str) -> None:
    client.close()
    uri = canonical_uri(uri)
    if not is_lite(uri):
        return
    with _lite_lock:
        _lite_open[uri] = _lite_open.get(uri, 1) - 1
        if _lite_open[uri] > 0:
            return
        _lite_open.pop(uri, None)
        # Closing a client keeps the Lite server and its file lock; only this hands the file over.
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


def drop_collection(config: StoreConfig, name: str) -> None:
    client = connect(config.milvus_uri)
    try:
        client.drop_collection(name)
        log.info("dropped Milvus collection %s", name)
    finally:
        disconnect(client, config.milvus_uri)


def _category_filter(category: str) -> str:
    # A JSON string literal is a valid Milvus string literal: quotes and backslashes come escaped.
    return f"{CATEGORY_FIELD} == {json.dumps(category, ensure_ascii=False)}"


class MilvusStore(VectorStore):
    kind = "milvus"

    def __init__(self, client, config: StoreConfig, section: dict, dim: int, count: int, staged: bool) -> None:
        self.client, self.config, self.section = client, config, section
        self.name = section["collection_name"]
        self.dim, self._count, self._staged = dim, count, staged
        self.placement = f"milvus ({'lite' if is_lite(config.milvus_uri) else config.milvus_uri})"
        self._filtered_count = functools.lru_cache(maxsize=256)(self._count_where)
        # A hot reload drops the old version's engine without closing it: its connection goes with it.
        self._finalizer = weakref.finalize(self, disconnect, client, config.milvus_uri)

    # -- writing -------------------------------------------------------------------------------------

    @classmethod
    def build(cls, config: StoreConfig, vectors: np.ndarray, categories: Sequence[str], choice: IndexChoice,
              staging: Path, owner: Path) -> "MilvusStore":
        index_type, params = milvus_index_for(choice, config.milvus_uri)
        section = {"kind": cls.kind, "uri": canonical_uri(config.milvus_uri), "collection": config.collection_prefix,
                   "index_type": index_type, "index_params": params, "nprobe": choice.nprobe,
                   "owner": str(Path(owner).resolve())}
        store = cls._create(config, section, vectors.shape[1], staging)
        try:
            store.add(vectors, categories)
        except BaseException:
            store.discard()
            raise
        return store

    @classmethod
    def _create(cls, config: StoreConfig, template: dict, dim: int, staging: Path) -> "MilvusStore":
        from pymilvus import DataType, MilvusClient

        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        section = template | {"collection_name": f"{template['collection']}_{stamp}_{secrets.token_hex(3)}"}
        write_staged_marker(staging, section)  # before creating it: a writer killed now leaves no orphan
        client = connect(config.milvus_uri)
        try:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(PRIMARY_KEY, DataType.INT64, is_primary=True)
            schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field(CATEGORY_FIELD, DataType.VARCHAR, max_length=MAX_CATEGORY_CHARS)
            # Strong: a search right after publishing sees every vector, not a bounded-stale view.
            client.create_collection(section["collection_name"], schema=schema, consistency_level="Strong")
        except Exception:
            disconnect(client, config.milvus_uri)
            raise
        return cls(client, config, section, dim, 0, staged=True)

    def add(self, vectors: np.ndarray, categories: Sequence[str]) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) != len(categories):
            raise ValueError(f"{len(vectors)} vectors but {len(categories)} categories")
        too_long = next((c for c in categories if len(c) > MAX_CATEGORY_CHARS), None)
        if too_long is not None:
            raise IndexBuildError(f"a category of {len(too_long)} characters exceeds the Milvus store's "
                                  f"{MAX_CATEGORY_CHARS}: {too_long[:40]}...")
        step = max(1, INSERT_BYTES // (4 * max(1, self.dim)))
        for start in range(0, len(vectors), step):
            rows = [{PRIMARY_KEY: self._count + start + i, VECTOR_FIELD: vector.tolist(), CATEGORY_FIELD: category}
                    for i, (vector, category) in enumerate(zip(vectors[start:start + step],
                                                               categories[start:start + step]))]
            self.client.insert(self.name, rows)
        self._count += len(vectors)

    def stage_next(self, staging: Path, kept_ids: np.ndarray | None = None) -> "MilvusStore":
        staged = MilvusStore._create(self.config, self.section, self.dim, staging)
        try:
            ids = np.arange(self._count, dtype=np.int64) if kept_ids is None else np.asarray(kept_ids, np.int64)
            step = max(1, min(MAX_TOPK, INSERT_BYTES // (4 * max(1, self.dim))))
            for start in range(0, len(ids), step):
                vectors, categories = self._rows(ids[start:start + step])
                staged.add(vectors, categories)
        except BaseException:
            staged.discard()
            raise
        return staged

    def persist(self, staging: Path) -> dict:
        kind, params = self.section["index_type"], self.section["index_params"]
        self.client.flush(self.name)
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name=VECTOR_FIELD, index_type=kind, metric_type="IP", params=params)
        self.client.create_index(self.name, index_params)
        self._staged = False
        return {k: v for k, v in self.section.items()}

    def discard(self) -> None:
        if self._staged:
            self.client.drop_collection(self.name)
            self._staged = False

    # -- reading -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, config: StoreConfig, section: dict) -> "MilvusStore":
        """The collection a version's `store` section names."""
        section = dict(section)
        client = connect(config.milvus_uri)
        try:
            name = section["collection_name"]
            if not client.has_collection(name):
                raise IndexOpenError(f"Milvus collection {name} of this index version is missing at "
                                     f"{config.milvus_uri}")
            client.load_collection(name)
            fields = client.describe_collection(name)["fields"]
            dim = next(int(f["params"]["dim"]) for f in fields if f["name"] == VECTOR_FIELD)
            count = cls._query_count(client, name, "")
        except BaseException:
            disconnect(client, config.milvus_uri)
            raise
        return cls(client, config, section, dim, count, staged=False)

    @staticmethod
    def _query_count(client, name: str, expr: str) -> int:
        return int(client.query(name, filter=expr, output_fields=["count(*)"])[0]["count(*)"])

    def _count_where(self, category: str) -> int:
        return self._query_count(self.client, self.name, _category_filter(category))

    def count(self, category: str | None = None) -> int:
        return self._count if category is None else self._filtered_count(category)

    def search(self, query: np.ndarray, fetch: int, category: str | None = None, widen: int = 1) -> StoreHits:
        params, can_widen = self._search_params(min(fetch, MAX_TOPK), category is not None, widen)
        result = self.client.search(
            self.name, data=[np.asarray(query, dtype=np.float32).reshape(-1).tolist()], limit=min(fetch, MAX_TOPK),
            filter=_category_filter(category) if category is not None else "",
            output_fields=[PRIMARY_KEY],  # without it Milvus sends every field back, vectors included
            search_params={"metric_type": "IP", "params": params})
        hits = result[0]
        return StoreHits(np.array([h["distance"] for h in hits], dtype=np.float32),
                         np.array([h[PRIMARY_KEY] for h in hits], dtype=np.int64), can_widen)

    def _search_params(self, fetch: int, filtered: bool, widen: int) -> tuple[dict, bool]:
        kind, built = self.section["index_type"], self.section["index_params"]
        if kind.startswith("IVF"):
            # As in the FAISS store: the build's nprobe (1 when the factory was given explicitly).
            nprobe = min(built["nlist"], (self.section.get("nprobe") or 1) * widen)
            return {"nprobe": nprobe}, filtered and nprobe < built["nlist"]
        if kind == "HNSW":
            ef = min(MAX_HNSW_EF, max(FAISS_DEFAULT_EF, (2 if filtered else 1) * fetch) * widen)
            return {"ef": ef}, filtered and ef < min(MAX_HNSW_EF, self._count)
        return {}, False

    def _rows(self, vector_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
        wanted = [int(i) for i in vector_ids]
        got = {r[PRIMARY_KEY]: r for r in self.client.get(self.name, ids=wanted,
                                                           output_fields=[VECTOR_FIELD, CATEGORY_FIELD])}
        missing = [i for i in wanted if i not in got]
        if missing:
            raise IndexOpenError(f"Milvus collection {self.name} lacks vector ids {missing[:10]}")
        vectors = np.array([got[i][VECTOR_FIELD] for i in wanted], dtype=np.float32).reshape(len(wanted), self.dim)
        return vectors, [got[i][CATEGORY_FIELD] for i in wanted]

    def vectors(self, vector_ids: np.ndarray) -> np.ndarray:
        # Milvus keeps the raw vectors beside any index, so they come back exact whatever the index.
        ids = np.asarray(vector_ids, dtype=np.int64)
        step = max(1, min(MAX_TOPK, INSERT_BYTES // (4 * max(1, self.dim))))
        parts = [self._rows(ids[start:start + step])[0] for start in range(0, len(ids), step)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def consistency_problems(self, manifest: Manifest) -> list[str]:
        problems = []
        indexes = self.client.list_indexes(self.name)
        if not indexes:
            problems.append(f"Milvus collection {self.name} has no vector index")
        else:
            info = self.client.describe_index(self.name, indexes[0])
            if info.get("index_type") != self.section["index_type"] or info.get("metric_type") != "IP":
                problems.append(f"Milvus collection {self.name} is indexed as {info.get('index_type')}/"
                                f"{info.get('metric_type')}, the manifest says {self.section['index_type']}/IP")
            if info.get("pending_index_rows"):
                problems.append(f"Milvus collection {self.name}: {info['pending_index_rows']} rows not indexed yet")
        return problems

    def describe(self) -> dict:
        return {"kind": self.kind, "placement": self.placement, "collection": self.name,
                "index_type": self.section["index_type"]}

    def close(self) -> None:
        self._finalizer()  # runs disconnect once, whether called here or at garbage collection
