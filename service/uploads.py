"""Reading the uploaded photo out of a multipart request, with a clear 4xx for every malformed case."""
from __future__ import annotations

from fastapi import HTTPException, Request, UploadFile


async def read_photo_upload(request: Request, image: UploadFile) -> bytes:
    """The bytes of the one photo sent as form field `image`; HTTPException(4xx) otherwise."""
    data = await image.read()
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    return data
