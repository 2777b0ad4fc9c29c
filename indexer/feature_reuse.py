"""Embeddings from backbone feature maps already on disk (adapt's cache), instead of a pass per photo.

An adapted model shares its frozen backbone with the cache `adapt` filled, so indexing its
catalogue needs only the head on the cached maps: no decoding, no forward pass. A map is used only
for the file it was made from (same path, order and sha256) under the same backbone weights and
preprocessing; anything else falls back to encoding.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from model import LoadedModel

from .encode import EncodeResult

log = logging.getLogger("snap2shop.indexer")

FEATURE_CHOICES = ("auto", "off")


def feature_cache_for(loaded: LoadedModel, features: str) -> Path | None:
    """`features`: "off", "auto" (the cache that adapted this checkpoint, if it names one) or a folder."""
    if features == "off":
        return None
    if features == "auto":
        cache = (loaded.extra.get("adapt") or {}).get("cache")
        return Path(cache) if cache else None
    return Path(features)


def encode_from_cached_maps(paths: Sequence[Path], loaded: LoadedModel, cache_root: Path) -> EncodeResult | None:
    """The catalogue's embeddings from cached maps, or None (logged) when the cache cannot stand in."""
    from model.training.adapt_cache import find_catalog_maps

    started = time.perf_counter()
    part = find_catalog_maps(cache_root, loaded.model, [Path(p) for p in paths])
    if part is None:
        log.info("no complete feature cache of these photos under %s: encoding them", cache_root)
        return None
    try:
        cached = part.read(["ok", "error", "sha256"])
    except Exception as exc:  # an older cache without hashes, or a damaged shard
        log.info("feature cache %s not usable (%s): encoding the photos", part.dir, exc)
        return None
    digests = []
    for path in paths:
        try:
            digests.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
        except OSError:
            digests.append("")
    stale = [i for i, (ok, have, now) in enumerate(zip(cached["ok"], cached["sha256"], digests)) if ok and have != now]
    if stale:
        log.info("%d photos changed since %s was cached (e.g. %s): encoding them all", len(stale), part.dir,
                 paths[stale[0]])
        return None
    ok_rows = np.flatnonzero(cached["ok"])
    chunks = []
    model = loaded.model.eval()
    with torch.inference_mode():
        for shard in range(part.shards):
            span = part.shard_rows(shard)
            maps = part.read(["maps"], np.arange(span.start, span.stop))["maps"]
            keep = cached["ok"][span.start:span.stop]
            if keep.any():
                chunks.append(model.embed_feature_maps(torch.from_numpy(maps[keep]).float()).numpy())
    failures = [(int(i), str(cached["error"][i]).split(": ", 1)[-1]) for i in np.flatnonzero(~cached["ok"])]
    wall = time.perf_counter() - started
    log.info("embedded %d photos from the cached feature maps in %s (%.1f s)", len(ok_rows), part.dir, wall)
    return EncodeResult.from_chunks(chunks, [ok_rows], [digests[i] for i in ok_rows], failures,
                                    loaded.model.embedding_dim,
                                    timings={"wall_s": round(wall, 3), "reused_features": str(part.dir)})
