"""Database schema as an ordered list of migrations (sqlite-utils).

Each migration is a function ``(db) -> None`` with a unique name. `migrate(db)` applies the ones
not yet recorded in ``_migrations``, each inside a transaction, so opening an older database
brings it up to date and opening a current one is a no-op. Never edit a released migration;
append a new one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import sqlite_utils

from . import paths

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_core(db: sqlite_utils.Database) -> None:
    """Profiles, documents, requests, suggestions, feedback, library, model versions."""
    db["profiles"].create({"id": str, "name": str, "created_at": float}, pk="id", if_not_exists=True)
    db["documents"].create(
        {"id": int, "profile_id": str, "title": str, "text": str, "created_at": float, "updated_at": float},
        pk="id",
        foreign_keys=[("profile_id", "profiles", "id")],
        if_not_exists=True,
    )
    db["requests"].create(
        {
            "id": int,
            "profile_id": str,
            "mode": str,
            "text": str,
            "options": str,  # JSON: style, sample, keywords, inspire kind, sampling settings
            "prompt": str,  # the exact prompt the model saw
            "policy_version": int,
            "document_id": int,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("profile_id", "profiles", "id")],
        if_not_exists=True,
    )
    db["suggestions"].create(
        {"id": int, "request_id": int, "idx": int, "text": str, "policy_version": int, "created_at": float},
        pk="id",
        foreign_keys=[("request_id", "requests", "id")],
        if_not_exists=True,
    )
    db["feedback"].create(
        {
            "id": int,
            "suggestion_id": int,
            "request_id": int,
            "profile_id": str,
            "kind": str,  # thumb | stars | best | rank | edit | accept
            "value": float,
            "edited_text": str,
            "ranking": str,  # JSON list of suggestion ids, best first
            "policy_version": int,
            "source": str,  # ui | api | cli | simulated | import
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("suggestion_id", "suggestions", "id"), ("request_id", "requests", "id")],
        if_not_exists=True,
    )
    db["library"].create(
        {
            "id": int,
            "profile_id": str,
            "text": str,
            "source": str,
            "embedding": bytes,  # float32 little-endian, L2-normalised
            "embedder": str,
            "created_at": float,
        },
        pk="id",
        if_not_exists=True,
    )
    db["model_versions"].create(
        {
            "id": int,
            "profile_id": str,
            "kind": str,  # policy | reward
            "path": str,
            "status": str,  # published | candidate | discarded | rolled_back
            "parent_id": int,
            "metrics": str,  # JSON {namespaced name: value}
            "config": str,  # JSON
            "created_at": float,
            "published_at": float,
        },
        pk="id",
        if_not_exists=True,
    )
    for table, cols in [
        ("documents", ["profile_id"]),
        ("requests", ["profile_id"]),
        ("suggestions", ["request_id"]),
        ("feedback", ["suggestion_id"]),
        ("feedback", ["request_id"]),
        ("library", ["profile_id"]),
        ("model_versions", ["profile_id", "kind"]),
    ]:
        db[table].create_index(cols, if_not_exists=True)


@migration
def m002_learning(db: sqlite_utils.Database) -> None:
    """Embedding cache, per-version metric series, learner state and guard events."""
    db["embeddings"].create(
        {"hash": str, "embedder": str, "dim": int, "vector": bytes, "created_at": float},
        pk=("hash", "embedder"),
        if_not_exists=True,
    )
    db["metrics"].create(
        {"id": int, "version_id": int, "name": str, "step": int, "value": float, "created_at": float},
        pk="id",
        if_not_exists=True,
    )
    db["metrics"].create_index(["version_id", "name"], if_not_exists=True)
    db["learner_state"].create(
        {
            "profile_id": str,
            "phase": str,  # idle | reward | rl | evaluate | publish | paused | error
            "progress": float,
            "message": str,
            "metrics": str,
            "error": str,
            "paused": int,
            "command": str,  # pending control command: train_now | pause | resume
            "heartbeat": float,
            "updated_at": float,
        },
        pk="profile_id",
        if_not_exists=True,
    )
    db["events"].create(
        {"id": int, "profile_id": str, "version_id": int, "kind": str, "reason": str, "data": str, "created_at": float},
        pk="id",
        if_not_exists=True,
    )


@migration
def m003_styles(db: sqlite_utils.Database) -> None:
    """Styles a person defines for restyle mode (name -> description)."""
    db["styles"].create(
        {"profile_id": str, "name": str, "description": str, "created_at": float},
        pk=("profile_id", "name"),
        if_not_exists=True,
    )


@migration
def m004_relative_version_paths(db: sqlite_utils.Database) -> None:
    """Version paths relative to the data directory (the database's folder), where they name a
    directory in it: older rows held absolute or working-directory-relative paths, which a moved
    data directory or another working directory no longer finds (and garbage collection took for orphans)."""
    data_dir = database_dir(db)
    if data_dir is None:
        return
    for r in list(db["model_versions"].rows_where(select="id, path")):
        new = paths.migrate_stored(r["path"] or "", data_dir)
        if r["path"] and new != r["path"]:
            db["model_versions"].update(r["id"], {"path": new})


def database_dir(db: sqlite_utils.Database) -> Path | None:
    """The folder of the database file (the data directory), None for an in-memory database."""
    for _seq, name, file in db.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return Path(file).parent if file else None
    return None


def applied(db: sqlite_utils.Database) -> list[str]:
    if "_migrations" not in db.table_names():
        return []
    return [r["name"] for r in db["_migrations"].rows_where(order_by="applied_at")]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending migrations in order; return the names applied now."""
    db["_migrations"].create({"name": str, "applied_at": float}, pk="name", if_not_exists=True)
    done = set(applied(db))
    now_applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with db.conn:  # one transaction per migration
            fn(db)
            db["_migrations"].insert({"name": name, "applied_at": time.time()}, replace=True)
        now_applied.append(name)
    return now_applied
