"""Store: the only door to the database.

A small typed API over sqlite-utils: dataclasses and dicts in and out, no SQL outside
``storage/``. One SQLite connection per thread (``threading.local``), WAL journal and a busy
timeout so the app, the learner process and the CLI can share one file. Every multi-row write
runs in one ``BEGIN IMMEDIATE`` transaction, so a write is either all there or not at all.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import sqlite_utils

from storage import paths, schema
from storage.learning import LearningRecords
from storage.records import (
    BUSY_TIMEOUT_MS,
    FEEDBACK_KINDS,
    FEEDBACK_SOURCES,
    Feedback,
    ModelVersion,
    NotFound,
    Request,
    Snippet,
    StoreError,
    Suggestion,
    _blob_to_vec,
    _clamp,
    _columns,
    _from_row,
    _key,
    _to_row,
    _vec_to_blob,
    _where,
    id_or_base,
)


class _Connection:
    """One thread's SQLite connection; closed when the last reference (its thread's local) goes."""

    def __init__(self, conn: sqlite3.Connection):
        self.db = sqlite_utils.Database(conn)
        self._finalizer = weakref.finalize(self, _close_quietly, conn)

    def close(self) -> None:
        self._finalizer()


def _close_quietly(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


class Store(LearningRecords):
    """Typed access to one inkloop database file.

    Safe to share between threads: each thread lazily opens its own connection.
    """

    def __init__(self, path: str | Path):
        self.path = Path(os.path.abspath(path))  # a later chdir must not move the database
        self.data_dir = self.path.parent
        """The data directory: the database's folder; version paths are stored relative to it."""
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()  # open ones, for close()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self.db
            with db.ensure_autocommit_on():
                db.execute("PRAGMA journal_mode=WAL")
            with self._write_lock:
                schema.migrate(db)
        except (OSError, sqlite3.DatabaseError) as e:  # a file where the folder should be, no access, ...
            self.close()
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise StoreError(f"cannot use {self.data_dir} as the data directory ({self.path.name}: {why})") from None

    # ------------------------------------------------------------------ plumbing
    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection, opened on first use. Only the thread-local holds it, so it is
        closed when its thread ends (a thread per streamed suggestion leaks nothing); a long-lived
        thread keeps its one connection."""
        holder = getattr(self._local, "conn", None)
        if holder is None:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            holder = _Connection(conn)
            self._local.conn = holder
            with self._lock:
                self._conns.add(holder)
        return holder.db

    def close(self) -> None:
        with self._lock:
            holders = list(self._conns)
            self._conns = weakref.WeakSet()
        for h in holders:
            h.close()
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

    def _get(self, table: str, key: Any, what: str) -> dict[str, Any]:
        """One row by primary key, or NotFound (also for ids no SQLite row can have)."""
        try:
            return dict(self.db[table].get(_key(key, what)))
        except sqlite_utils.db.NotFoundError:
            raise NotFound(f"{what} {key} does not exist") from None

    def resolve_path(self, stored: str | Path) -> Path:
        """Where a stored (data-directory-relative) path is now."""
        return paths.resolve(str(stored), self.data_dir)

    def relative_path(self, path: str | Path) -> str:
        """How a path is stored and shown: relative to the data directory when inside it."""
        return paths.to_stored(path, self.data_dir)

    def _version(self, row: dict[str, Any]) -> ModelVersion:
        v = _from_row(ModelVersion, row)
        v.rel_path, v.path = v.path, str(self.resolve_path(v.path))
        return v

    def _insert(self, db: sqlite_utils.Database, cls: type, table: str, values: dict[str, Any]) -> int:
        return int(db[table].insert(_to_row(cls, values)).last_pk)

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
                document_id = self._get("documents", document_id, "document")["id"]
                db["documents"].update(document_id, {"text": text, "title": title, "updated_at": now})
                return int(document_id)
            return int(db["documents"].insert(
                {"profile_id": profile_id, "title": title, "text": text, "created_at": now, "updated_at": now}
            ).last_pk)

    def get_document(self, document_id: int) -> dict[str, Any]:
        return self._get("documents", document_id, "document")

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
        req = Request(0, profile_id, mode, text, options, prompt, int(policy_version), document_id, time.time())
        with self._write() as db:
            req.id = self._insert(db, Request, "requests", _columns(req, "id"))
            for i, s in enumerate(suggestions):
                sugg = Suggestion(0, req.id, i, s, req.policy_version)
                sugg.id = self._insert(db, Suggestion, "suggestions", {**_columns(sugg, "id"),
                                                                      "created_at": req.created_at})
                req.suggestions.append(sugg)
        return req

    def _with_suggestions(self, rows: Iterable[dict[str, Any]], where: str = "", args: Sequence[Any] = ()
                          ) -> list[Request]:
        """Request rows -> Requests holding their suggestions, read in one query: those of the
        requests `where` selects (an SQL condition on request ids, e.g. a subquery), else of these rows."""
        reqs = [_from_row(Request, dict(r)) for r in rows]
        if not reqs:
            return reqs
        if not where:
            where, args = f"request_id in ({','.join('?' * len(reqs))})", [r.id for r in reqs]
        by_id = {r.id: r for r in reqs}
        for s in self.db["suggestions"].rows_where(where, list(args), order_by="request_id, idx"):
            if s["request_id"] in by_id:
                by_id[s["request_id"]].suggestions.append(_from_row(Suggestion, dict(s)))
        return reqs

    def get_request(self, request_id: int) -> Request:
        return self._with_suggestions([self._get("requests", request_id, "request")])[0]

    def recent_requests(self, profile_id: str | None = None, limit: int = 50, mode: str | None = None) -> list[Request]:
        where, args = _where(profile_id=profile_id, mode=mode)
        return self._with_suggestions(self.db["requests"].rows_where(where, args, order_by="id desc", limit=limit))

    def suggestions_for(self, request_id: int) -> list[Suggestion]:
        return [
            _from_row(Suggestion, dict(r))
            for r in self.db["suggestions"].rows_where("request_id = ?", [_clamp(request_id)], order_by="idx")
        ]

    def get_suggestion(self, suggestion_id: int) -> Suggestion:
        return _from_row(Suggestion, self._get("suggestions", suggestion_id, "suggestion"))

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
        sugg = self.get_suggestion(suggestion_id)
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
        fb = Feedback(0, sugg.id, sugg.request_id, req["profile_id"], kind, None if value is None else float(value),
                      edited_text if kind == "edit" else None, list(ranking) if kind == "rank" else None,
                      sugg.policy_version, source, time.time())
        with self._write() as db:
            return self._insert(db, Feedback, "feedback", _columns(fb, "id"))

    def get_feedback(self, feedback_id: int) -> Feedback:
        return _from_row(Feedback, self._get("feedback", feedback_id, "feedback"))

    def feedback(
        self, profile_id: str | None = None, since_id: int = 0, limit: int | None = None,
        request_id: int | None = None,
    ) -> list[Feedback]:
        """Feedback rows in id order: of one profile and/or one request, newer than since_id."""
        where, args = _where(profile_id=profile_id, request_id=None if request_id is None else _clamp(request_id))
        where = " and ".join(["id > ?", *([where] if where else [])])
        rows = self.db["feedback"].rows_where(where, [_clamp(since_id), *args], order_by="id", limit=limit)
        return [_from_row(Feedback, dict(r)) for r in rows]

    def last_feedback_id(self, profile_id: str | None = None) -> int:
        where = "where profile_id = ?" if profile_id else ""
        args = [profile_id] if profile_id else []
        row = self.db.execute(f"select max(id) from feedback {where}", args).fetchone()
        return int(row[0] or 0)

    def requests_with_feedback(self, profile_id: str | None = None, since_id: int = 0) -> list[dict[str, Any]]:
        """Everything the reward model learns from, grouped by request:
        ``{"request": Request, "suggestions": [Suggestion], "feedback": [Feedback]}`` for every
        request that has at least one feedback row with id > since_id (all its feedback included).
        Three queries, however many requests."""
        prof, args = ("profile_id = ? and ", [profile_id]) if profile_id is not None else ("", [])
        rated = (f"select request_id from feedback where {prof}request_id is not null "
                 "group by request_id having max(id) > ?")
        rated_args = [*args, _clamp(since_id)]
        reqs = self._with_suggestions(
            self.db["requests"].rows_where(f"id in ({rated})", rated_args, order_by="id"),
            f"request_id in ({rated})", rated_args)
        by_req: dict[int, list[Feedback]] = {r.id: [] for r in reqs}
        for r in self.db["feedback"].rows_where(f"{prof}request_id in ({rated})", [*args, *rated_args], order_by="id"):
            by_req[r["request_id"]].append(_from_row(Feedback, dict(r)))
        return [{"request": req, "suggestions": req.suggestions, "feedback": by_req[req.id]} for req in reqs]

    def imported_prompts(self, profile_id: str, import_id: str) -> set[str]:
        """Prompts of the requests a file import (`options.import_id`) already wrote for a profile."""
        rows = self.db.execute(
            "select text from requests where profile_id = ? and mode = 'imported' "
            "and json_extract(options, '$.import_id') = ?", [profile_id, import_id]).fetchall()
        return {r[0] for r in rows}

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

    def profile_status(self, profile_id: str) -> dict[str, Any]:
        """What a profile's status shows, wherever it is asked (`inkloop status`, the API's /status,
        the UI): its live policy and reward-model version ids (0: the base model, no reward model
        yet), the whole store's counts and the profile's own, the profile's feedback by kind and
        its learner's state."""
        return {
            "profile": profile_id,
            "policy_version": id_or_base(self.live_version(profile_id, "policy")),
            "reward_version": id_or_base(self.live_version(profile_id, "reward")),
            "counts": self.counts(),
            "profile_counts": self.counts(profile_id),
            "feedback_by_kind": self.feedback_counts_by_kind(profile_id),
            "learner": self.learner_state(profile_id),
        }

    # ------------------------------------------------------------------ library
    def add_snippet(
        self, profile_id: str, text: str, embedding: np.ndarray | None, embedder: str | None, source: str = "pasted"
    ) -> int:
        profile_id = self.ensure_profile(profile_id)
        snip = Snippet(0, profile_id, text, source, embedder, embedding, time.time())
        with self._write() as db:
            return self._insert(db, Snippet, "library", _columns(snip, "id"))

    def snippets(self, profile_id: str) -> list[Snippet]:
        return [_from_row(Snippet, dict(r))
                for r in self.db["library"].rows_where("profile_id = ?", [profile_id], order_by="id")]

    def set_snippet_embedding(self, snippet_id: int, embedding: np.ndarray, embedder: str) -> None:
        snippet_id = self._get("library", snippet_id, "snippet")["id"]
        with self._write() as db:
            db["library"].update(snippet_id, _to_row(Snippet, {"embedding": embedding, "embedder": embedder}))

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

    # ------------------------------------------------------------------ grouped writes
    @contextlib.contextmanager
    def transaction(self) -> Iterator["Store"]:
        """Group several Store writes (from this thread) into one all-or-nothing transaction,
        e.g. a dataset import: on any error nothing of it is written."""
        with self._write():
            yield self
