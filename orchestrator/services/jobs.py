"""The batch job runner: takes queued batch items (oldest job first) and generates each into the gallery, at most
`batch_concurrency` at once in this process. State lives in the database (services.job_queue), so jobs resume
after a restart and several processes can share one database."""
from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from engine.errors import InvalidRequest
from orchestrator.api.deps import Services
from orchestrator.core import metrics
from orchestrator.models.job import BatchItem, BatchItemRequest
from orchestrator.services import generation, job_queue
from orchestrator.services.triton import TritonFailed, TritonUnavailable

log = logging.getLogger(__name__)
SOURCE = "batch"
# How often the runner looks for work that no local event announced (items submitted to another process, items
# back from a Triton outage or from a dead runner) and refreshes its running items; well under STALE_AFTER_S.
POLL_S = 2.0


class JobRunner:
    def __init__(self, services: Services):
        self.services = services
        self._running: dict[int, tuple[str, asyncio.Task]] = {}  # item id -> (job id, its task)
        self._wake = asyncio.Event()
        self._paused_until = 0.0  # monotonic time before which nothing is claimed (Triton was unreachable)
        self._stopping = False
        self._poller: asyncio.Task | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._poller = asyncio.create_task(self._run(), name="batch-runner")

    async def stop(self) -> None:
        """Stop claiming, stop the running items (closing their Triton streams) and queue them again for the next
        start; nothing of them is stored."""
        self._stopping = True
        self._wake.set()
        await self._poller  # lets a claim in progress finish, so that no item is left 'running' untracked
        interrupted = list(self._running)
        await self._cancel_tasks(interrupted)
        if interrupted:
            await run_in_threadpool(job_queue.requeue, self.services.engine, interrupted, "interrupted by a restart")

    def wake(self) -> None:
        """New work: look now rather than at the next poll. Safe from any thread (sync routes run in workers)."""
        self._event_loop.call_soon_threadsafe(self._wake.set)

    async def stop_job(self, job_id: str) -> None:
        """Stop this process's running items of a job just cancelled in the database."""
        await self._cancel_tasks([item_id for item_id, (job, _) in self._running.items() if job == job_id])

    async def _cancel_tasks(self, item_ids: list[int]) -> None:
        tasks = [self._running[item_id][1] for item_id in item_ids if item_id in self._running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._pass()
            except Exception:  # the database away, say: keep the runner alive and try again at the next poll
                log.exception("batch runner: a pass failed; trying again in %.0f s", POLL_S)
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except TimeoutError:
                pass

    async def _pass(self) -> None:
        engine = self.services.engine
        if self._running:
            await self._cancel_tasks(list(await run_in_threadpool(job_queue.keep_alive, engine, list(self._running))))
        await run_in_threadpool(job_queue.requeue_stale, engine)
        free = self.services.settings.batch_concurrency - len(self._running)
        if free > 0 and time.monotonic() >= self._paused_until and not self._stopping:
            for item in await run_in_threadpool(job_queue.claim_next, engine, free):
                task = asyncio.create_task(self._generate(item), name=f"batch-item-{item.id}")
                self._running[item.id] = (item.job_id, task)
                task.add_done_callback(partial(self._finished, item.id))
        metrics.QUEUE_DEPTH.set(await run_in_threadpool(job_queue.queued_count, engine))

    def _finished(self, item_id: int, task: asyncio.Task) -> None:
        self._running.pop(item_id, None)
        if not task.cancelled() and task.exception() is not None:  # its outcome could not even be recorded
            log.error("batch item %s: %r; it runs again once its lease lapses", item_id, task.exception())
        self.wake()

    async def _generate(self, item: BatchItem) -> None:
        """One item through the generation path; its outcome is recorded in the clip's own transaction, so an item
        is never 'done' without its clip nor a clip stored for a cancelled item."""
        services, outcome = self.services, "failed"  # outcome None: not finished, it runs again
        try:
            request = BatchItemRequest.model_validate_json(item.request)
            with Session(services.engine, expire_on_commit=False) as session:
                plan = await generation.plan(session, request, services.settings, services.triton, services.store,
                                             SOURCE)
            with metrics.ACTIVE_STREAMS.track_inprogress():
                await generation.generate_clip(
                    services.engine, plan, services.settings, services.triton, services.store,
                    record_with=partial(job_queue.record_outcome, item=item, clip_id=plan.clip_id))
            outcome = "done"
        except TritonUnavailable as exc:
            self._paused_until = time.monotonic() + services.settings.retry_after_s
            outcome = None
            await run_in_threadpool(job_queue.requeue, services.engine, [item.id], str(exc))
        except (InvalidRequest, TritonFailed) as exc:
            await run_in_threadpool(job_queue.record_failure, services.engine, item, str(exc))
        except job_queue.ItemNotRunning:  # its job was cancelled as the clip was being stored: nothing was
            outcome = "cancelled"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:  # a fault of ours: fail this item with its reason rather than retry it forever
            log.exception("batch item %s failed", item.id)
            await run_in_threadpool(job_queue.record_failure, services.engine, item,
                                    f"the orchestrator failed on this item: {exc!r}")
        finally:
            if outcome:
                metrics.GENERATIONS.labels(SOURCE, outcome).inc()
