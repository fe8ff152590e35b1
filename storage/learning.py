"""The learning side of the store: model versions, metric series, the learner's state and events,
and bounded growth. A mixin of `Store` (it uses the store's connection and write transaction)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from storage.records import (
    KEEP_EVENTS,
    KEEP_METRICS,
    VERSION_KINDS,
    VERSION_STATUSES,
    ModelVersion,
    StoreError,
    _clamp,
    _columns,
    _loads,
    _to_row,
    _where,
)


class LearningRecords:
    """Model versions, metric series, learner state and events (mixed into Store)."""

    # ------------------------------------------------------------------ model versions
    def add_version(
        self,
        *,
        profile_id: str,
        kind: str,
        path: str | Path,
        metrics: dict[str, float] | None = None,
        config: dict[str, Any] | None = None,
        parent_id: int | None = None,
        status: str = "candidate",
    ) -> ModelVersion:
        """Register a version whose directory is already fully written (see storage.artifacts)."""
        if kind not in VERSION_KINDS:
            raise StoreError(f"unknown version kind {kind!r}")
        if status not in VERSION_STATUSES:
            raise StoreError(f"unknown version status {status!r}")
        profile_id = self.ensure_profile(profile_id)
        now = time.time()
        v = ModelVersion(0, profile_id, kind, self.relative_path(path), status, parent_id, metrics or {}, config or {}, now,
                         now if status == "published" else None)
        with self._write() as db:
            vid = self._insert(db, ModelVersion, "model_versions", _columns(v, "id"))
            if metrics:
                self._log_metrics(db, vid, metrics, step=0)
        return self.get_version(vid)

    def get_version(self, version_id: int) -> ModelVersion:
        return self._version(self._get("model_versions", version_id, "version"))

    def versions(self, profile_id: str | None = None, kind: str | None = None) -> list[ModelVersion]:
        where, args = _where(profile_id=profile_id, kind=kind)
        rows = self.db["model_versions"].rows_where(where, args, order_by="id desc")
        return [self._version(dict(r)) for r in rows]

    def published_versions(self, profile_id: str, kind: str = "policy", limit: int | None = None
                           ) -> list[ModelVersion]:
        """Published versions of a kind, the live one (most recently published) first."""
        rows = self.db["model_versions"].rows_where(
            "profile_id = ? and kind = ? and status = 'published'", [profile_id, kind],
            order_by="published_at desc, id desc", limit=limit)
        return [self._version(dict(r)) for r in rows]

    def live_version(self, profile_id: str, kind: str = "policy") -> ModelVersion | None:
        """The most recently published version of this kind, or None (the base model)."""
        return next(iter(self.published_versions(profile_id, kind, limit=1)), None)

    def set_version_status(self, version_id: int, status: str) -> ModelVersion:
        if status not in VERSION_STATUSES:
            raise StoreError(f"unknown version status {status!r}")
        version_id = self.get_version(version_id).id
        with self._write() as db:
            changes: dict[str, Any] = {"status": status}
            if status == "published":
                changes["published_at"] = time.time()
            db["model_versions"].update(version_id, changes)
        return self.get_version(version_id)

    def update_version_metrics(self, version_id: int, metrics: dict[str, float]) -> None:
        v = self.get_version(version_id)
        with self._write() as db:
            db["model_versions"].update(v.id, _to_row(ModelVersion, {"metrics": {**v.metrics, **metrics}}))

    # ------------------------------------------------------------------ metrics series
    @staticmethod
    def _log_metrics(db: sqlite_utils.Database, version_id: int | None, metrics: dict[str, float], step: int) -> None:
        now = time.time()
        db["metrics"].insert_all(
            {"version_id": version_id, "name": k, "step": int(step), "value": float(v), "created_at": now}
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )

    def log_metrics(self, version_id: int | None, metrics: dict[str, float], step: int = 0) -> None:
        """Append namespaced metrics (e.g. ``rl/kl``) for a version at a step."""
        with self._write() as db:
            self._log_metrics(db, version_id, metrics, step)

    def metric_series(self, name: str, version_id: int | None = None) -> list[dict[str, Any]]:
        where, args = _where(name=name, version_id=None if version_id is None else _clamp(version_id))
        return [dict(r) for r in self.db["metrics"].rows_where(where, args, order_by="id")]

    # ------------------------------------------------------------------ learner state and events
    def learner_state(self, profile_id: str = "default") -> dict[str, Any] | None:
        try:
            r = dict(self.db["learner_state"].get(profile_id))
        except sqlite_utils.db.NotFoundError:
            return None
        r["metrics"] = _loads(r.get("metrics"), {})
        r["paused"] = bool(r.get("paused"))
        return r

    def set_learner_state(self, profile_id: str = "default", **fields: Any) -> dict[str, Any]:
        allowed = {"phase", "progress", "message", "metrics", "error", "paused", "command", "heartbeat"}
        bad = set(fields) - allowed
        if bad:
            raise StoreError(f"unknown learner state fields {sorted(bad)}")
        if "metrics" in fields and not isinstance(fields["metrics"], str):
            fields["metrics"] = json.dumps(fields["metrics"], sort_keys=True, default=float)
        if "paused" in fields:
            fields["paused"] = int(bool(fields["paused"]))
        with self._write() as db:
            db["learner_state"].upsert({"profile_id": profile_id, **fields, "updated_at": time.time()}, pk="profile_id")
        return self.learner_state(profile_id) or {}

    def take_learner_command(self, profile_id: str = "default") -> str | None:
        """Atomically read and clear the pending control command."""
        with self._write() as db:
            try:
                cmd = db["learner_state"].get(profile_id)["command"]
            except sqlite_utils.db.NotFoundError:
                return None
            if cmd:
                db["learner_state"].update(profile_id, {"command": None})
            return cmd or None

    def add_event(
        self, kind: str, reason: str, profile_id: str = "default", version_id: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> int:
        with self._write() as db:
            return int(
                db["events"]
                .insert(
                    {
                        "profile_id": profile_id,
                        "version_id": version_id,
                        "kind": kind,
                        "reason": reason,
                        "data": json.dumps(data or {}, sort_keys=True, default=str),
                        "created_at": time.time(),
                    }
                )
                .last_pk
            )

    def events(self, profile_id: str | None = None, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = _where(profile_id=profile_id, kind=kind)
        rows = self.db["events"].rows_where(where, args, order_by="id desc", limit=limit)
        return [{**dict(r), "data": _loads(r["data"], {})} for r in rows]

    # ------------------------------------------------------------------ bounded growth
    def trim_history(self, profile_id: str, keep_events: int | None = None, keep_metrics: int | None = None,
                     chunk: int = 5_000) -> dict[str, int]:
        """Delete all but the newest `keep_events` events and `keep_metrics` metric rows (of the
        profile's versions) of one profile (defaults KEEP_EVENTS, KEEP_METRICS), in short
        transactions of `chunk` rows so live writes interleave. Returns how many rows of each went."""
        keep_events = KEEP_EVENTS if keep_events is None else keep_events
        keep_metrics = KEEP_METRICS if keep_metrics is None else keep_metrics
        if min(keep_events, keep_metrics) < 0 or chunk < 1:
            raise StoreError("keep_events and keep_metrics must be >= 0 and chunk >= 1")
        old = {
            "events": ("select id from events where profile_id = ? order by id desc limit -1 offset ?",
                       [profile_id, int(keep_events)]),
            "metrics": ("select m.id from metrics m join model_versions v on m.version_id = v.id "
                        "where v.profile_id = ? order by m.id desc limit -1 offset ?", [profile_id, int(keep_metrics)]),
        }
        gone = {}
        for table, (sql, args) in old.items():
            ids = [r[0] for r in self.db.execute(sql, args).fetchall()]
            for i in range(0, len(ids), chunk):
                part = ids[i : i + chunk]
                with self._write() as db:
                    db.execute(f"delete from {table} where id in ({','.join('?' * len(part))})", part)
            gone[table] = len(ids)
        return gone
