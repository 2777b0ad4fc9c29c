"""HTTP routes: thin; the work happens in SearchEngine."""
from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile
import anyio
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from model import ImageDecodeError
from model.preprocessing import SUPPORTED_FORMAT_NAMES, Box, BoxError

from .deps import EngineDep, ServicesDep, SettingsDep
from .engine import IMAGE_ROOT_FIX, SearchHit
from .uploads import read_photo_upload

router = APIRouter()


class SearchResult(BaseModel):
    model_config = ConfigDict(extra="allow")  # catalogue columns (category, title, ...) ride along

    item_id: str
    score: float
    image_url: str


class SearchResponse(BaseModel):
    results: list[SearchResult]
    # Where the model found the garment it searched for: x0, y0, x1, y1 in the photo's own pixels
    # (after EXIF rotation, like `box`); null when the model embeds the whole photo.
    region: list[int] | None = None
    took_ms: float
    timings_ms: dict[str, float]
    index_version: str


def item_image_url(item_id: str) -> str:
    # Every character escaped, `/` too: the one spelling that reaches any id's photo (see get_item_image).
    return f"/items/{quote(item_id, safe='')}/image"


def _photo_suffix_sent(request: Request) -> bool:
    """Whether the URL as sent ends in a literal `/image`, not in an escaped `%2Fimage` of the id.

    The server decodes %2F before routing, so only the raw path tells the two apart; under a
    server that leaves raw_path out, the decoded path is all there is."""
    raw = request.scope.get("raw_path")
    return raw.endswith(b"/image") if raw else request.url.path.endswith("/image")


def _result(hit: SearchHit) -> SearchResult:
    reserved = {"item_id", "score", "image_url"}
    extra = {k: v for k, v in hit.attributes.items() if k not in reserved}
    return SearchResult(item_id=hit.item_id, score=round(hit.score, 6), image_url=item_image_url(hit.item_id), **extra)


@router.post("/search", response_model=SearchResponse, summary="Find the catalogue items shown in a photo",
             responses={400: {"description": "not a usable image"}, 413: {"description": "upload too large"},
                        422: {"description": "no single photo in field `image`, or a bad k or box"},
                        503: {"description": "at capacity; retry after the Retry-After header's seconds"}})
async def search(
    request: Request,
    engine: EngineDep,
    services: ServicesDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description=f"the shopper's photo ({SUPPORTED_FORMAT_NAMES})")],
    k: Annotated[int | None, Query(ge=1, le=100, description="number of distinct items to return (default 10)")] = None,
    box: Annotated[str | None, Query(description="search only this region: x0,y0,x1,y1 in the photo's "
                                                 "own pixels, after EXIF rotation", examples=["120,80,520,640"])] = None,
    category: Annotated[str | None, Query(description="only items of this category", max_length=200)] = None,
) -> SearchResponse:
    started = time.perf_counter()
    k = k or settings.default_k
    if k > settings.max_k:
        raise HTTPException(422, f"k must be at most {settings.max_k}")
    try:
        region = Box.parse(box) if box else None
    except BoxError as exc:
        raise HTTPException(422, str(exc)) from None
    data = await read_photo_upload(request, image)
    timings = {"read_ms": (time.perf_counter() - started) * 1e3}
    t0 = time.perf_counter()
    try:
        # Off the event loop, and only so many at once: a full-size decode can take 100+ MB.
        tensor, frame, photo = await anyio.to_thread.run_sync(engine.embedder.decode_query, data, region,
                                                       limiter=services.decode_slots)
    except BoxError as exc:
        raise HTTPException(422, str(exc)) from None
    except ImageDecodeError as exc:
        request.state.error = str(exc)
        raise HTTPException(400, f"cannot use this upload as a photo: {exc}") from None
    timings["decode_ms"] = (time.perf_counter() - t0) * 1e3
    embedded = await services.batcher.embed(engine.embedder, tensor, photo)
    timings |= {"queue_ms": embedded.queue_ms, "embed_ms": embedded.embed_ms}
    hits = await run_in_threadpool(engine.search_vector, embedded.vector, k, category or None, timings)
    took_ms = (time.perf_counter() - started) * 1e3
    services.metrics.observe_search(timings, took_ms)
    rounded = {name: round(value, 2) for name, value in timings.items()}
    request.state.timings_ms = rounded | {"batch_size": embedded.batch_size}
    found = frame.to_photo(embedded.box) if embedded.box is not None else None
    return SearchResponse(results=[_result(h) for h in hits], region=found, took_ms=round(took_ms, 2),
                          timings_ms=rounded, index_version=engine.version)


# Declared before the metadata route, which would also match a path ending in /image.
@router.get("/items/{item_id:path}/image", summary="The item's shop photo", response_class=FileResponse,
            responses={404: {"description": "no such item, or its photo files are not under the image root"}})
def get_item_image(item_id: str, request: Request, engine: EngineDep) -> Response:
    """The photo of the item whose id is everything between `/items/` and the final `/image`.

    Ids may hold any character, `/` included. The rule that keeps this route and `/items/{id}`
    apart: a URL ending in a literal `/image` asks for the photo of the id before it; any other URL
    asks for the metadata of the whole id. Escape an id's own slashes as %2F (encodeURIComponent,
    `quote(id, safe='')`), as `image_url` does, and every id works both ways: `/items/a%2Fb%2Fimage`
    is the metadata of item `a/b/image`, `/items/a%2Fb%2Fimage/image` its photo. Unescaped slashes
    work too, except that `/items/a/b/image` is then the photo of item `a/b`.
    """
    if not _photo_suffix_sent(request):
        # The decoded path ends in /image, the URL as sent in %2Fimage: the id's own last segment.
        return JSONResponse(get_item(f"{item_id}/image", engine))
    paths = engine.image_paths(item_id)
    if paths is None:
        whole = f"{item_id}/image"
        hint = (f"; for item {whole!r} itself, escape its slashes as %2F" if engine.index.metadata.item(whole)
                else "")
        raise HTTPException(404, f"no item {item_id!r} in the index{hint}")
    for path in paths:
        if path.is_file():
            return FileResponse(path)
    if engine.photos.gone:
        raise HTTPException(404, f"the photo files of item {item_id!r} are not under the service's image root "
                                 f"(/healthz shows it); if the catalogue has moved, start the service with "
                                 f"{IMAGE_ROOT_FIX} naming its folder now")
    raise HTTPException(404, f"the photo files of item {item_id!r} are no longer where the index says; "
                             f"`python -m indexer verify --deep` lists the missing photos")


@router.get("/items/{item_id:path}", summary="Metadata of one catalogue item")
def get_item(item_id: str, engine: EngineDep) -> dict:
    """The item whose id is everything after `/items/`, `/` included; an id ending in `/image` needs
    its slashes escaped (%2F), see the photo route."""
    item = engine.index.metadata.item(item_id)
    if item is None:
        raise HTTPException(404, f"no item {item_id!r} in the index")
    reserved = {"item_id", "image_count", "image_url"}
    return {"item_id": item_id, **{k: v for k, v in item["attributes"].items() if k not in reserved},
            "image_count": item["image_count"], "image_url": item_image_url(item_id)}


@router.get("/categories", summary="Catalogue categories with their item counts, for filters")
def categories(engine: EngineDep) -> dict:
    return {"field": "category", "values": [{"value": v, "items": n} for v, n in engine.categories()]}


@router.get("/healthz", summary="Liveness, and what is loaded")
def healthz(engine: EngineDep) -> dict:
    return {"status": "ok"} | engine.describe()


@router.get("/readyz", summary="Whether searches are answered, from which index version",
            responses={503: {"description": "not serving (yet)"}})
def readyz(request: Request) -> JSONResponse:
    services = getattr(request.app.state, "services", None)
    if services is None:
        return JSONResponse({"ready": False, "reason": "the index is not loaded yet"}, status_code=503)
    engine = services.holder.engine
    published = services.holder.published_version()
    last = services.holder.last_reload
    return JSONResponse({
        "ready": True, "index_version": engine.version, "vectors": int(engine.store.count()),
        "items": engine.index.manifest.counts.items, "model": engine.model.spec,
        "published_version": published.name if published else None,
        "last_reload": last.to_dict() if last else None,
    } | services.live_numbers())


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/stats", summary="Recent per-step search timings (p50/p95/p99) and load, as JSON")
def stats(services: ServicesDep) -> dict:
    engine = services.holder.engine
    return services.metrics.summary(services.live_numbers()) | {"index_version": engine.version}
