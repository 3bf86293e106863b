"""Operations: /healthz (the process is up), /readyz (database and Triton reachable), /metrics (Prometheus)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from orchestrator.api.deps import ServicesDep
from orchestrator.core.db import database_reachable

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep):
    checks = {"database": await run_in_threadpool(database_reachable, services.engine),
              "triton": await services.triton.ready()}
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503,
                        headers=None if ready else {"Retry-After": str(services.settings.retry_after_s)})


@router.get("/metrics")
def prometheus_metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
