"""``GET /files/{id}`` and ``GET /files/{id}/thumbnail``: a member's short-lived download URL.

The stable ``url`` of an attachment (in MESSAGE_CREATE and ``Attachment.url``) points here. With
``Authorization: Bearer <accessToken>`` a member of the file's room gets ``302 Found`` to a
presigned GET of the object store (valid ``download_url_ttl_s``), or, when the request
``Accept``s ``application/json``, ``200 {"url", "expires_in"}`` (what a browser needs for an
``<img src>``: an ``<img>`` can't send the header). Errors are JSON
``{"error": {"code", "message"}}`` with the GraphQL codes: 401 UNAUTHENTICATED, 404 NOT_FOUND
(unknown, deleted, not a member of the file's room or no longer one, as ChatService answers
for rooms; or no thumbnail: one still being made adds ``Retry-After: 1``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from chat_core.files.service import ThumbnailPending
from graphql_edge.auth import authenticate
from graphql_edge.context import Services
from graphql_edge.convert import parse_id
from shardchat.errors import BadInput, ChatError, ErrorCode

_STATUS: dict[ErrorCode, int] = {
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "BAD_USER_INPUT": 400,
    "RATE_LIMITED": 429,
    "INTERNAL": 500,
}


def _error(code: ErrorCode, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, _STATUS[code], headers=headers)


def files_endpoint(services: Services) -> Callable[[Request], Awaitable[Response]]:
    async def download(request: Request) -> Response:
        files = services.files
        if files is None:
            return _error("NOT_FOUND", "files are not enabled on this server")
        principal, why = await authenticate(services.auth, request.headers.get("authorization"))
        if principal is None:
            if why is not None and why.code != "UNAUTHENTICATED":
                return _error(why.code, why.message)  # the Registry is down: retry
            return _error(
                "UNAUTHENTICATED",
                why.message if why else "authentication required",
                {"WWW-Authenticate": "Bearer"},
            )
        try:
            upload_id = parse_id(request.path_params["id"])
        except BadInput:
            return _error("NOT_FOUND", "file not found")
        thumbnail = request.url.path.endswith("/thumbnail")
        try:
            url = await files.download_url(principal.user_id, upload_id, thumbnail)
        except ThumbnailPending as exc:
            return _error(exc.code, exc.message, {"Retry-After": "1"})
        except ChatError as exc:
            return _error(exc.code, exc.message)
        no_store = {"Cache-Control": "no-store"}  # the URL expires: never cache the answer
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"url": url, "expires_in": files.download_ttl_s}, headers=no_store)
        return RedirectResponse(url, 302, headers=no_store)

    return download
