"""Store: the only door to the database.

A small typed API over sqlite-utils: dataclasses and dicts in and out, no SQL outside
``storage/``. One SQLite connection per thread (``threading.local``), WAL journal and a busy
timeout so the app, the learner process and the CLI can share one file. Every multi-row write
runs in one ``BEGIN IMMEDIATE`` transaction, so a write is either all there or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import sqlite_utils

from . import schema

FEEDBACK_KINDS = ("thumb", "stars", "best", "rank", "edit", "accept")
FEEDBACK_SOURCES = ("ui", "api", "cli", "simulated", "import")
VERSION_KINDS = ("policy", "reward")
VERSION_STATUSES = ("candidate", "published", "discarded", "rolled_back")
BUSY_TIMEOUT_MS = 30_000


class StoreError(ValueError):
    """A request the store refuses (unknown id, invalid value). Nothing was written."""


class NotFound(StoreError):
    """An id that does not exist."""


@dataclass
class Suggestion:
    id: int
    request_id: int
    idx: int
    text: str
    policy_version: int


@dataclass
class Request:
    id: int
    profile_id: str
    mode: str
    text: str
    options: dict[str, Any]
    prompt: str
    policy_version: int
    document_id: int | None
    created_at: float
    suggestions: list[Suggestion] = field(default_factory=list)


@dataclass
class Feedback:
    id: int
    suggestion_id: int
    request_id: int
    profile_id: str
    kind: str
    value: float | None
    edited_text: str | None
    ranking: list[int] | None
    policy_version: int
    source: str
    created_at: float


@dataclass
class Snippet:
    id: int
    profile_id: str
    text: str
    source: str
    embedder: str | None
    embedding: np.ndarray | None
    created_at: float


@dataclass
class ModelVersion:
    id: int
    profile_id: str
    kind: str
    path: str
    status: str
    parent_id: int | None
    metrics: dict[str, float]
    config: dict[str, Any]
    created_at: float
    published_at: float | None


def text_hash(text: str) -> str:
    """Stable key for caching anything derived from a text (e.g. embeddings)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _vec_to_blob(v: np.ndarray) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()


def _blob_to_vec(b: bytes | None) -> np.ndarray | None:
    return None if b is None else np.frombuffer(b, dtype="<f4").copy()


def _loads(s: str | None, default: Any) -> Any:
    return default if s in (None, "") else json.loads(s)


class Store:
    """Typed access to one inkloop database file.

    Safe to share between threads: each thread lazily opens its own connection.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        db = self.db
        with db.ensure_autocommit_on():
            db.execute("PRAGMA journal_mode=WAL")
        self._write_lock = threading.Lock()
        with self._write_lock:
            schema.migrate(db)

    # ------------------------------------------------------------------ plumbing
    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            db = sqlite_utils.Database(conn)
            self._local.db = db
            with self._lock:
                self._all_conns.append(conn)
        return db

    def close(self) -> None:
        with self._lock:
            for conn in self._all_conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._all_conns.clear()
        self._local = threading.local()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction that takes the write lock up front (BEGIN IMMEDIATE),
        so concurrent writers wait on the busy timeout instead of failing mid-way."""
        db = self.db
        if db.conn.in_transaction:  # nested: join the outer transaction
            yield db
            return
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        else:
            db.conn.execute("COMMIT")

    def schema_migrations(self) -> list[str]:
        return schema.applied(self.db)

    # ------------------------------------------------------------------ profiles
    def ensure_profile(self, profile_id: str) -> str:
        profile_id = (profile_id or "default").strip()
        if not profile_id or len(profile_id) > 64:
            raise StoreError("profile must be 1-64 characters")
        with self._write() as db:
            db["profiles"].insert(
                {"id": profile_id, "name": profile_id, "created_at": time.time()}, pk="id", ignore=True
            )
        return profile_id

    def profiles(self) -> list[str]:
        return [r["id"] for r in self.db["profiles"].rows_where(order_by="created_at")]

    # ------------------------------------------------------------------ documents
    def save_document(self, profile_id: str, text: str, title: str = "Draft", document_id: int | None = None) -> int:
        """Create or update a draft. Returns its id."""
        profile_id = self.ensure_profile(profile_id)
        now = time.time()
        with self._write() as db:
            if document_id is not None:
                try:
                    db["documents"].get(document_id)
                except sqlite_utils.db.NotFoundError:
                    raise NotFound(f"document {document_id} does not exist") from None
                db["documents"].update(document_id, {"text": text, "title": title, "updated_at": now})
                return int(document_id)
            return int(
                db["documents"]
                .insert(
                    {"profile_id": profile_id, "title": title, "text": text, "created_at": now, "updated_at": now}
                )
                .last_pk
            )

    def get_document(self, document_id: int) -> dict[str, Any]:
        try:
            return dict(self.db["documents"].get(document_id))
        except sqlite_utils.db.NotFoundError:
            raise NotFound(f"document {document_id} does not exist") from None

    def latest_document(self, profile_id: str) -> dict[str, Any] | None:
        rows = list(
            self.db["documents"].rows_where("profile_id = ?", [profile_id], order_by="updated_at desc", limit=1)
        )
        return dict(rows[0]) if rows else None

    # ------------------------------------------------------------------ requests and suggestions
    def record_request(
        self,
        *,
        profile_id: str,
        mode: str,
        text: str,
        options: dict[str, Any],
        prompt: str,
        policy_version: int,
        suggestions: Sequence[str],
        document_id: int | None = None,
    ) -> Request:
        """Record one request and its candidates atomically; returns them with their ids."""
        profile_id = self.ensure_profile(profile_id)
        now = time.time()
        with self._write() as db:
            rid = int(
                db["requests"]
                .insert(
                    {
                        "profile_id": profile_id,
                        "mode": mode,
                        "text": text,
                        "options": json.dumps(options, sort_keys=True),
                        "prompt": prompt,
                        "policy_version": int(policy_version),
                        "document_id": document_id,
                        "created_at": now,
                    }
                )
                .last_pk
            )
            sugg = []
            for i, s in enumerate(suggestions):
                sid = int(
                    db["suggestions"]
                    .insert(
                        {
                            "request_id": rid,
                            "idx": i,
                            "text": s,
                            "policy_version": int(policy_version),
                            "created_at": now,
                        }
                    )
                    .last_pk
                )
                sugg.append(Suggestion(sid, rid, i, s, int(policy_version)))
        return Request(rid, profile_id, mode, text, options, prompt, int(policy_version), document_id, now, sugg)

    def _request_from_row(self, r: dict[str, Any], with_suggestions: bool = True) -> Request:
        req = Request(
            id=r["id"],
            profile_id=r["profile_id"],
            mode=r["mode"],
            text=r["text"],
            options=_loads(r["options"], {}),
            prompt=r["prompt"] or "",
            policy_version=r["policy_version"] or 0,
            document_id=r["document_id"],
            created_at=r["created_at"],
        )
        if with_suggestions:
            req.suggestions = self.suggestions_for(req.id)
        return req

    def get_request(self, request_id: int) -> Request:
        try:
            r = self.db["requests"].get(request_id)
        except sqlite_utils.db.NotFoundError:
            raise NotFound(f"request {request_id} does not exist") from None
        return self._request_from_row(dict(r))

    def recent_requests(self, profile_id: str | None = None, limit: int = 50, mode: str | None = None) -> list[Request]:
        where, args = [], []
        if profile_id is not None:
            where.append("profile_id = ?")
            args.append(profile_id)
        if mode is not None:
            where.append("mode = ?")
            args.append(mode)
        rows = self.db["requests"].rows_where(
            " and ".join(where) or None, args, order_by="id desc", limit=limit
        )
        return [self._request_from_row(dict(r)) for r in rows]

    def suggestions_for(self, request_id: int) -> list[Suggestion]:
        return [
            Suggestion(r["id"], r["request_id"], r["idx"], r["text"], r["policy_version"] or 0)
            for r in self.db["suggestions"].rows_where("request_id = ?", [request_id], order_by="idx")
        ]

    def get_suggestion(self, suggestion_id: int) -> Suggestion:
        try:
            r = self.db["suggestions"].get(suggestion_id)
        except (sqlite_utils.db.NotFoundError, TypeError):
            raise NotFound(f"suggestion {suggestion_id} does not exist") from None
        return Suggestion(r["id"], r["request_id"], r["idx"], r["text"], r["policy_version"] or 0)

    # ------------------------------------------------------------------ feedback
    def add_feedback(
        self,
        suggestion_id: int,
        kind: str,
        value: float | None = None,
        edited_text: str | None = None,
        ranking: Sequence[int] | None = None,
        source: str = "api",
    ) -> int:
        """Validate and record one rating. Raises StoreError (nothing written) on bad input.

        - thumb: value +1 (up) or -1 (down)
        - stars: value 1..5
        - best: this suggestion is the best of its request (no value)
        - rank: ranking = suggestion ids of one request, best first (must include this one)
        - edit: edited_text = the person's improved version of this suggestion
        - accept: the suggestion went into the draft (value optional, e.g. 1)
        """
        if kind not in FEEDBACK_KINDS:
            raise StoreError(f"unknown feedback kind {kind!r}; expected one of {', '.join(FEEDBACK_KINDS)}")
        if source not in FEEDBACK_SOURCES:
            raise StoreError(f"unknown source {source!r}")
        sugg = self.get_suggestion(int(suggestion_id))
        if kind == "thumb":
            if value not in (1, -1, 1.0, -1.0):
                raise StoreError("thumb needs value +1 (up) or -1 (down)")
        elif kind == "stars":
            if value is None or not (1 <= float(value) <= 5) or float(value) != int(float(value)):
                raise StoreError("stars needs an integer value from 1 to 5")
        elif kind == "edit":
            if not edited_text or not edited_text.strip():
                raise StoreError("edit needs a non-empty edited_text")
        elif kind == "rank":
            if not ranking or len(ranking) < 2:
                raise StoreError("rank needs a ranking of at least two suggestion ids, best first")
            ranking = [int(x) for x in ranking]
            if len(set(ranking)) != len(ranking):
                raise StoreError("ranking repeats a suggestion id")
            siblings = {s.id for s in self.suggestions_for(sugg.request_id)}
            unknown = [x for x in ranking if x not in siblings]
            if unknown:
                raise StoreError(f"ranking ids {unknown} are not suggestions of request {sugg.request_id}")
            if sugg.id not in ranking:
                raise StoreError("ranking must include suggestion_id")
        req = self.db["requests"].get(sugg.request_id)
        with self._write() as db:
            return int(
                db["feedback"]
                .insert(
                    {
                        "suggestion_id": sugg.id,
                        "request_id": sugg.request_id,
                        "profile_id": req["profile_id"],
                        "kind": kind,
                        "value": None if value is None else float(value),
                        "edited_text": edited_text if kind == "edit" else None,
                        "ranking": json.dumps(list(ranking)) if kind == "rank" else None,
                        "policy_version": sugg.policy_version,
                        "source": source,
                        "created_at": time.time(),
                    }
                )
                .last_pk
            )

    def _feedback_from_row(self, r: dict[str, Any]) -> Feedback:
        return Feedback(
            id=r["id"],
            suggestion_id=r["suggestion_id"],
            request_id=r["request_id"],
            profile_id=r["profile_id"],
            kind=r["kind"],
            value=r["value"],
            edited_text=r["edited_text"],
            ranking=_loads(r["ranking"], None),
            policy_version=r["policy_version"] or 0,
            source=r["source"] or "api",
            created_at=r["created_at"],
        )

    def get_feedback(self, feedback_id: int) -> Feedback:
        try:
            return self._feedback_from_row(dict(self.db["feedback"].get(feedback_id)))
        except sqlite_utils.db.NotFoundError:
            raise NotFound(f"feedback {feedback_id} does not exist") from None

    def feedback(
        self, profile_id: str | None = None, since_id: int = 0, limit: int | None = None,
        request_id: int | None = None,
    ) -> list[Feedback]:
        """Feedback rows in id order: of one profile and/or one request, newer than since_id."""
        where, args = ["id > ?"], [since_id]
        if profile_id is not None:
            where.append("profile_id = ?")
            args.append(profile_id)
        if request_id is not None:
            where.append("request_id = ?")
            args.append(request_id)
        rows = self.db["feedback"].rows_where(" and ".join(where), args, order_by="id", limit=limit)
        return [self._feedback_from_row(dict(r)) for r in rows]

    def last_feedback_id(self, profile_id: str | None = None) -> int:
        where = "where profile_id = ?" if profile_id else ""
        args = [profile_id] if profile_id else []
        row = self.db.execute(f"select max(id) from feedback {where}", args).fetchone()
        return int(row[0] or 0)

    def requests_with_feedback(self, profile_id: str | None = None, since_id: int = 0) -> list[dict[str, Any]]:
        """Everything the reward model learns from, grouped by request:
        ``{"request": Request, "suggestions": [Suggestion], "feedback": [Feedback]}`` for every
        request that has at least one feedback row with id > since_id (all its feedback included)."""
        fb = self.feedback(profile_id)
        by_req: dict[int, list[Feedback]] = {}
        for f in fb:
            by_req.setdefault(f.request_id, []).append(f)
        out = []
        for rid, items in sorted(by_req.items()):
            if max(f.id for f in items) <= since_id:
                continue
            req = self.get_request(rid)
            out.append({"request": req, "suggestions": req.suggestions, "feedback": items})
        return out

    def counts(self, profile_id: str | None = None) -> dict[str, int]:
        def n(table: str) -> int:
            if profile_id is None or table == "suggestions":
                if table == "suggestions" and profile_id is not None:
                    row = self.db.execute(
                        "select count(*) from suggestions s join requests r on s.request_id = r.id "
                        "where r.profile_id = ?",
                        [profile_id],
                    ).fetchone()
                    return int(row[0])
                return self.db[table].count
            return self.db[table].count_where("profile_id = ?", [profile_id])

        return {t: n(t) for t in ("requests", "suggestions", "feedback", "documents", "library")}

    def feedback_counts_by_kind(self, profile_id: str | None = None) -> dict[str, int]:
        where = "where profile_id = ?" if profile_id else ""
        args = [profile_id] if profile_id else []
        rows = self.db.execute(f"select kind, count(*) from feedback {where} group by kind", args).fetchall()
        out = {k: 0 for k in FEEDBACK_KINDS}
        out.update({k: int(c) for k, c in rows})
        return out

    # ------------------------------------------------------------------ library
    def add_snippet(
        self, profile_id: str, text: str, embedding: np.ndarray | None, embedder: str | None, source: str = "pasted"
    ) -> int:
        profile_id = self.ensure_profile(profile_id)
        with self._write() as db:
            return int(
                db["library"]
                .insert(
                    {
                        "profile_id": profile_id,
                        "text": text,
                        "source": source,
                        "embedding": None if embedding is None else _vec_to_blob(embedding),
                        "embedder": embedder,
                        "created_at": time.time(),
                    }
                )
                .last_pk
            )

    def snippets(self, profile_id: str) -> list[Snippet]:
        return [
            Snippet(r["id"], r["profile_id"], r["text"], r["source"], r["embedder"], _blob_to_vec(r["embedding"]),
                    r["created_at"])
            for r in self.db["library"].rows_where("profile_id = ?", [profile_id], order_by="id")
        ]

    def set_snippet_embedding(self, snippet_id: int, embedding: np.ndarray, embedder: str) -> None:
        with self._write() as db:
            db["library"].update(snippet_id, {"embedding": _vec_to_blob(embedding), "embedder": embedder})

    # ------------------------------------------------------------------ person-defined styles
    def save_style(self, profile_id: str, name: str, description: str) -> None:
        name, description = (name or "").strip(), (description or "").strip()
        if not name or len(name) > 40:
            raise StoreError("a style name must be 1-40 characters")
        if not description:
            raise StoreError("a style needs a description")
        profile_id = self.ensure_profile(profile_id)
        with self._write() as db:
            db["styles"].upsert(
                {"profile_id": profile_id, "name": name, "description": description, "created_at": time.time()},
                pk=("profile_id", "name"),
            )

    def styles(self, profile_id: str) -> dict[str, str]:
        return {
            r["name"]: r["description"]
            for r in self.db["styles"].rows_where("profile_id = ?", [profile_id], order_by="name")
        }

    # ------------------------------------------------------------------ embedding cache
    def get_embeddings(self, hashes: Sequence[str], embedder: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        hashes = list(dict.fromkeys(hashes))
        for i in range(0, len(hashes), 500):
            chunk = hashes[i : i + 500]
            qs = ",".join("?" * len(chunk))
            for r in self.db.query(
                f"select hash, vector from embeddings where embedder = ? and hash in ({qs})", [embedder, *chunk]
            ):
                out[r["hash"]] = _blob_to_vec(r["vector"])
        return out

    def put_embeddings(self, vectors: dict[str, np.ndarray], embedder: str) -> None:
        now = time.time()
        with self._write() as db:
            db["embeddings"].insert_all(
                (
                    {"hash": h, "embedder": embedder, "dim": int(len(v)), "vector": _vec_to_blob(v), "created_at": now}
                    for h, v in vectors.items()
                ),
                pk=("hash", "embedder"),
                replace=True,
            )

    # ------------------------------------------------------------------ model versions
    def _version_from_row(self, r: dict[str, Any]) -> ModelVersion:
        return ModelVersion(
            id=r["id"],
            profile_id=r["profile_id"],
            kind=r["kind"],
            path=r["path"],
            status=r["status"],
            parent_id=r["parent_id"],
            metrics=_loads(r["metrics"], {}),
            config=_loads(r["config"], {}),
            created_at=r["created_at"],
            published_at=r["published_at"],
        )

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
        with self._write() as db:
            vid = int(
                db["model_versions"]
                .insert(
                    {
                        "profile_id": profile_id,
                        "kind": kind,
                        "path": str(path),
                        "status": status,
                        "parent_id": parent_id,
                        "metrics": json.dumps(metrics or {}, sort_keys=True),
                        "config": json.dumps(config or {}, sort_keys=True, default=str),
                        "created_at": now,
                        "published_at": now if status == "published" else None,
                    }
                )
                .last_pk
            )
            if metrics:
                self._log_metrics(db, vid, metrics, step=0)
        return self.get_version(vid)

    def get_version(self, version_id: int) -> ModelVersion:
        try:
            return self._version_from_row(dict(self.db["model_versions"].get(version_id)))
        except sqlite_utils.db.NotFoundError:
            raise NotFound(f"version {version_id} does not exist") from None

    def versions(self, profile_id: str | None = None, kind: str | None = None) -> list[ModelVersion]:
        where, args = [], []
        if profile_id is not None:
            where.append("profile_id = ?")
            args.append(profile_id)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        rows = self.db["model_versions"].rows_where(" and ".join(where) or None, args, order_by="id desc")
        return [self._version_from_row(dict(r)) for r in rows]

    def live_version(self, profile_id: str, kind: str = "policy") -> ModelVersion | None:
        """The most recently published version of this kind, or None (the base model)."""
        rows = list(
            self.db["model_versions"].rows_where(
                "profile_id = ? and kind = ? and status = 'published'",
                [profile_id, kind],
                order_by="published_at desc, id desc",
                limit=1,
            )
        )
        return self._version_from_row(dict(rows[0])) if rows else None

    def set_version_status(self, version_id: int, status: str) -> ModelVersion:
        if status not in VERSION_STATUSES:
            raise StoreError(f"unknown version status {status!r}")
        self.get_version(version_id)
        with self._write() as db:
            fields: dict[str, Any] = {"status": status}
            if status == "published":
                fields["published_at"] = time.time()
            db["model_versions"].update(version_id, fields)
        return self.get_version(version_id)

    def update_version_metrics(self, version_id: int, metrics: dict[str, float]) -> None:
        v = self.get_version(version_id)
        merged = {**v.metrics, **metrics}
        with self._write() as db:
            db["model_versions"].update(version_id, {"metrics": json.dumps(merged, sort_keys=True)})

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
        where, args = ["name = ?"], [name]
        if version_id is not None:
            where.append("version_id = ?")
            args.append(version_id)
        return [dict(r) for r in self.db["metrics"].rows_where(" and ".join(where), args, order_by="id")]

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
        where, args = [], []
        if profile_id is not None:
            where.append("profile_id = ?")
            args.append(profile_id)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        rows = self.db["events"].rows_where(" and ".join(where) or None, args, order_by="id desc", limit=limit)
        return [{**dict(r), "data": _loads(r["data"], {})} for r in rows]

    # ------------------------------------------------------------------ grouped writes
    @contextlib.contextmanager
    def transaction(self) -> Iterator["Store"]:
        """Group several Store writes (from this thread) into one all-or-nothing transaction,
        e.g. a dataset import: on any error nothing of it is written."""
        with self._write():
            yield self


def as_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (numpy arrays dropped) for JSON responses."""
    d = asdict(obj)
    return {k: v for k, v in d.items() if not isinstance(v, np.ndarray)}
