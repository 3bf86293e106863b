"""How failures become HTTP answers: bad input 422 naming what was wrong, Triton away 503 with Retry-After."""
from __future__ import annotations

from typing import TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from engine.errors import InvalidRequest
from orchestrator.services.triton import TritonFailed, TritonUnavailable

Row = TypeVar("Row")


def found(row: Row | None, what: str, key: str, listing: str) -> Row:
    """`row`, or a 404 naming the id that matched nothing and where the existing ones are listed."""
    if row is None:
        raise HTTPException(404, f"no {what} has the id {key!r}; GET {listing} lists them")
    return row


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(InvalidRequest)
    async def _invalid(_request: Request, exc: InvalidRequest):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(TritonUnavailable)
    async def _unavailable(_request: Request, exc: TritonUnavailable):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(retry_after_s)})

    @app.exception_handler(TritonFailed)
    async def _failed(_request: Request, exc: TritonFailed):
        return JSONResponse({"detail": str(exc)}, status_code=502)
