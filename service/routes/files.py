"""Files: outputs in local storage, served for signed URLs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from jobs.storage import LocalStorage

from ..deps import GatewayDep
from ..errors import ApiError
from ..schemas import ErrorResponse

router = APIRouter(tags=["files"])


@router.get("/v1/files/{key:path}", response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}}, 403: {"model": ErrorResponse}})
def get_file(key: str, expires: Annotated[int, Query()], sig: Annotated[str, Query(max_length=128)],
             gw: GatewayDep) -> FileResponse:
    """An output file, for a signed URL that has not expired (local storage)."""
    storage = gw.storage
    if not isinstance(storage, LocalStorage):
        raise ApiError(404, "not_found", "outputs are not served by the gateway with this storage")
    try:
        path = storage.path(key)
    except ValueError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    refused = storage.verify(key, expires, sig)
    if refused:
        raise ApiError(403, "forbidden", refused)
    if not path.is_file():
        raise ApiError(404, "not_found", "this output no longer exists (expired)")
    return FileResponse(path, media_type="video/mp4")
