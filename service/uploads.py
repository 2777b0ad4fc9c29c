"""Reading the uploaded photo out of a multipart request, with a clear 4xx for every malformed case.

`read_photo_upload` covers what reaches the route; `explain_validation_error` covers what FastAPI
refuses before the route runs (no `image` field, a body that is not a multipart form, a `k` that
is not a number), turning its list of errors into one sentence a person can act on.
"""
from __future__ import annotations

from fastapi import HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData

PHOTO_FIELD = "image"
HOW_TO_SEND = f"send the photo as a multipart/form-data upload with the file in field `{PHOTO_FIELD}`"

_PLACES = {"query": "query parameter", "path": "path parameter", "header": "header", "cookie": "cookie",
           "body": "body field"}


async def read_photo_upload(request: Request, image: UploadFile) -> bytes:
    """The bytes of the one photo sent as form field `image`; HTTPException(4xx) otherwise."""
    # FastAPI keeps only one of several same-named parts; guessing which photo was meant would
    # answer a question nobody asked. The parsed form is cached on the request, so this is free.
    photos = (await request.form()).getlist(PHOTO_FIELD)
    if len(photos) > 1:
        raise HTTPException(422, f"send one photo per request: got {len(photos)} files in field "
                                 f"`{PHOTO_FIELD}`")
    data = await image.read()
    if not data:
        raise HTTPException(400, f"the file in field `{PHOTO_FIELD}` is empty (0 bytes)")
    return data


async def explain_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with `detail` as one readable sentence, and the individual errors, inputs left out.

    FastAPI's default echoes each offending input back, which for a photo sent without a
    filename is the whole photo decoded as text.
    """
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": describe_validation_error(request, exc),
                                                  "errors": errors})


def describe_validation_error(request: Request, exc: RequestValidationError) -> str:
    """One sentence per distinct problem, joined: what a person reads in `detail`."""
    sentences = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        if loc[:2] == ("body", PHOTO_FIELD):
            sentences.append(_describe_photo_field_error(request, exc, error))
        else:
            place = _PLACES.get(str(loc[0]), str(loc[0])) if loc else "request"
            name = ".".join(str(part) for part in loc[1:])
            sentences.append(f"{place} `{name}`: {error.get('msg', 'invalid')}" if name
                             else f"{place}: {error.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(sentences)) or "invalid request"


def _describe_photo_field_error(request: Request, exc: RequestValidationError, error: dict) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        has_body = (request.headers.get("content-length", "0") not in ("", "0")
                    or "transfer-encoding" in request.headers)
        if not content_type and not has_body:
            return f"the request has no body: {HOW_TO_SEND}"
        sent = f"a body of type {content_type}" if content_type else "a body without a Content-Type"
        return f"expected a multipart/form-data upload with the photo in field `{PHOTO_FIELD}`, got {sent}"
    form = exc.body if isinstance(exc.body, FormData) else FormData()
    if error.get("type") != "missing":
        return (f"field `{PHOTO_FIELD}` must be a file (a form part with a filename), not a text value: "
                f"{HOW_TO_SEND}")
    if PHOTO_FIELD in form:
        # What a browser form sends when no file was chosen: an empty part with an empty filename.
        return f"field `{PHOTO_FIELD}` holds no file (was a photo chosen?): {HOW_TO_SEND}"
    if not form:
        return f"the form has no fields (was the upload cut off?): {HOW_TO_SEND}"
    listed = ", ".join(f"`{name}`" for name in dict.fromkeys(form.keys()))
    return f"no field `{PHOTO_FIELD}` in the form (got {listed}): {HOW_TO_SEND}"
