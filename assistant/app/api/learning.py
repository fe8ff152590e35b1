"""REST routes for the live loop: learner control, versions and rollback, exports.

- ``GET  /api/v1/learner``                 the learner's state (phase, progress, metrics, heartbeat)
- ``POST /api/v1/learner {action}``        pause | resume | train_now
- ``GET  /api/v1/versions``                policy (or reward) versions with their metrics
- ``POST /api/v1/versions/{id}/rollback``  make that version live (0 = the base model)
- ``GET  /api/v1/events``                  guard firings, publishes, learner errors
- ``GET  /api/v1/metrics/{name}``          a metric series (e.g. rm/accuracy, eval/win_rate)
- ``POST /api/v1/export {what, version}``  export under <data_dir>/exports (never a caller path)
- ``GET  /api/v1/exports``, ``GET /api/v1/exports/{name}``  list / download the zips

Errors follow assistant.api: ``{"error": message}`` with 4xx.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from assistant.app.api.routes import API_PREFIX, MAX_ID
from assistant.app.export import (
    ExportBusy,
    ExportError,
    export_to_exports_dir,
    export_zip_path,
    list_exports,
)
from assistant.app.limits import Busy
from assistant.app.services import InputError, Services
from reward.loop.learner import send_command
from storage import artifacts
from storage.records import NotFound, as_dict, id_or_base


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LearnerIn(_In):
    action: Literal["pause", "resume", "train_now"] = Field(
        description="pause: stop starting new cycles; resume: start again; train_now: run a cycle now, "
                    "whatever the amount of new feedback.")
    profile: str | None = Field(None, min_length=1, max_length=64)


class ExportIn(_In):
    what: Literal["merged", "adapter", "reward", "feedback"] = Field(
        description="merged: LoRA merged into the base (a plain transformers model); adapter: the peft adapter "
                    "and value head; reward: the reward model; feedback: TRL-style JSONL datasets.")
    version: int | None = Field(None, ge=1, le=MAX_ID, description="Version id (default: the live one).")
    profile: str | None = Field(None, min_length=1, max_length=64)


class RollbackIn(_In):
    profile: str | None = Field(None, min_length=1, max_length=64)


def shown_path(path: str | Path, data_dir: str | Path) -> str:
    """A version's path as answers show it: relative to the data directory (never absolute)."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    for root in (Path(data_dir), Path(data_dir).resolve()):
        try:
            return str(p.relative_to(root))
        except ValueError:
            continue
    return p.name


def _version_out(v, live_id: int | None, data_dir: str | Path | None = None) -> dict[str, Any]:
    d = as_dict(v)
    d["path"] = d.pop("rel_path")  # relative to the data directory: never expose absolute paths
    d["live"] = v.id == live_id
    d["available"] = artifacts.available(v)
    d["path"] = getattr(v, "rel_path", None) or (shown_path(v.path, data_dir) if data_dir else Path(v.path).name)
    d.pop("rel_path", None)
    d.pop("config", None)
    return d


def learning_router(services: Services, data_dir: str | Path, base_model_path: str | None = None) -> APIRouter:
    """Routes over the store (and the exports folder of `data_dir`)."""

    r = APIRouter(prefix=API_PREFIX, tags=["learning"])
    store = services.store

    def prof(p: str | None) -> str:
        return p or services.default_profile

    @r.get("/learner", summary="The learner's state")
    def learner_state(profile: str | None = Query(None, min_length=1, max_length=64)) -> dict[str, Any]:
        return {"learner": store.learner_state(prof(profile))}

    @r.post("/learner", summary="Pause, resume, or train now")
    def learner_command(body: LearnerIn) -> dict[str, Any]:
        return {"learner": send_command(store, prof(body.profile), body.action)}

    @r.get("/versions", summary="Model versions (newest first) with their metrics")
    def versions(
        profile: str | None = Query(None, min_length=1, max_length=64),
        kind: Literal["policy", "reward"] = Query("policy"),
    ) -> dict[str, Any]:
        live = store.live_version(prof(profile), kind)
        return {
            "live": id_or_base(live),
            "versions": [_version_out(v, live.id if live else None, data_dir) for v in store.versions(prof(profile), kind)],
        }

    @r.post("/versions/{version_id}/rollback", summary="Make a version live again (0 = the base model)")
    def rollback(version_id: int = PathParam(ge=0, le=MAX_ID), body: RollbackIn | None = None) -> dict[str, Any]:
        p = prof(body.profile if body else None)
        if version_id < 0:
            raise InputError("version must be 0 (the base model) or a version id")
        try:
            now = artifacts.rollback(store, p, version_id)
        except artifacts.VersionError as e:
            raise InputError(str(e)) from None
        store.add_event("rollback", f"rolled back to {'version ' + str(now.id) if now else 'the base model'} (api)",
                        p, now.id if now else None)
        return {"live": id_or_base(now)}

    @r.get("/events", summary="Guard firings, publishes, rollbacks and learner errors (newest first)")
    def events(
        profile: str | None = Query(None, min_length=1, max_length=64),
        kind: str | None = Query(None, max_length=32),
        limit: int = Query(50, ge=1, le=500),
    ) -> dict[str, Any]:
        return {"events": store.events(prof(profile), kind, limit)}

    @r.get("/metrics/{name:path}", summary="One metric's series over versions, e.g. eval/win_rate")
    def metric(name: str, version: int | None = Query(None, ge=1, le=MAX_ID)) -> dict[str, Any]:
        if len(name) > 64:
            raise InputError("metric name too long")
        return {"name": name, "points": store.metric_series(name, version)}

    # exports (a merged one loads a full fp32 model) run here, never on the request threadpool;
    # two workers, so a second request meets the busy export slot at once (409) instead of queueing
    export_pool = ThreadPoolExecutor(2, thread_name_prefix="inkloop-export")

    @r.post("/export", summary="Export a version (or the feedback) as a zip under the data dir's exports folder",
            responses={409: {"description": "Another export is running (one at a time)."}})
    async def do_export(body: ExportIn) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            return export_to_exports_dir(
                store, data_dir, what=body.what, profile_id=prof(body.profile), version_id=body.version,
                base_path=base_model_path, keep=services.limits.keep_exports,
            )

        try:
            res = await asyncio.get_running_loop().run_in_executor(export_pool, run)
        except ExportBusy as e:
            raise Busy(str(e), services.limits.retry_after_seconds, status=409) from None
        except ExportError as e:
            raise InputError(str(e)) from None
        name = Path(res["zip"]).name
        return {"name": name, "bytes": res["bytes"], "download": f"{API_PREFIX}/exports/{name}"}

    @r.get("/exports", summary="Exports made so far")
    def exports() -> dict[str, Any]:
        return {"exports": list_exports(data_dir)}

    @r.get("/exports/{name}", summary="Download an export (zip)", response_class=FileResponse)
    def download(name: str):
        try:
            p = export_zip_path(data_dir, name)
        except ExportError as e:

            raise NotFound(str(e)) from None
        return FileResponse(p, media_type="application/zip", filename=p.name)

    return r
