"""The rows the store speaks: dataclasses, their generic mappers to and from sqlite-utils dicts,
and the store's errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

FEEDBACK_KINDS = ("thumb", "stars", "best", "rank", "edit", "accept")
FEEDBACK_SOURCES = ("ui", "api", "cli", "simulated", "import")
VERSION_KINDS = ("policy", "reward")
VERSION_STATUSES = ("candidate", "published", "discarded", "rolled_back", "deleting", "abandoned")
"""deleting: marked for pruning, its directory maybe half-deleted; abandoned: a candidate a killed
learner left unevaluated. Neither is ever served, restored or exported."""
BUSY_TIMEOUT_MS = 30_000
KEEP_EVENTS = 20_000
"""Events kept per profile by `Store.trim_history` (the learner trims at start)."""
KEEP_METRICS = 500_000
"""Metric rows (of a profile's versions) kept by `Store.trim_history`."""
T = TypeVar("T")


class StoreError(ValueError):
    """A request the store refuses (unknown id, invalid value). Nothing was written."""


class NotFound(StoreError):
    """An id that does not exist."""


def text_hash(text: str) -> str:
    """Stable key for caching anything derived from a text (e.g. embeddings)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _vec_to_blob(v: np.ndarray) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()


def _blob_to_vec(b: bytes | None) -> np.ndarray | None:
    return None if b is None else np.frombuffer(b, dtype="<f4").copy()


def _loads(s: str | None, default: Any) -> Any:
    return default if s in (None, "") else json.loads(s)


def _dumps(v: Any) -> str | None:
    return None if v is None else json.dumps(v, sort_keys=True, default=str)


def _json_col(default: Any) -> dict[str, Any]:
    """A field stored as JSON text (NULL or "" reads back as `default`)."""
    return {"decode": lambda s: _loads(s, default), "encode": _dumps}


def _null_as(default: Any) -> dict[str, Any]:
    """A field whose NULL (rows of older versions) reads back as `default`."""
    return {"decode": lambda v: default if v is None else v}


_VECTOR_COL = {"decode": lambda b: _blob_to_vec(b), "encode": lambda v: None if v is None else _vec_to_blob(v)}


@dataclass
class Suggestion:
    id: int
    request_id: int
    idx: int
    text: str
    policy_version: int = field(metadata=_null_as(0))


@dataclass
class Request:
    id: int
    profile_id: str
    mode: str
    text: str
    options: dict[str, Any] = field(metadata=_json_col({}))
    prompt: str = field(metadata=_null_as(""))
    policy_version: int = field(metadata=_null_as(0))
    document_id: int | None = None
    created_at: float = 0.0
    suggestions: list[Suggestion] = field(default_factory=list, metadata={"column": False})


@dataclass
class Feedback:
    id: int
    suggestion_id: int
    request_id: int
    profile_id: str
    kind: str
    value: float | None
    edited_text: str | None
    ranking: list[int] | None = field(metadata=_json_col(None))
    policy_version: int = field(metadata=_null_as(0))
    source: str = field(metadata=_null_as("api"))
    created_at: float = 0.0


@dataclass
class Snippet:
    id: int
    profile_id: str
    text: str
    source: str
    embedder: str | None
    embedding: np.ndarray | None = field(metadata=_VECTOR_COL)
    created_at: float = 0.0


@dataclass
class ModelVersion:
    id: int
    profile_id: str
    kind: str
    path: str
    status: str
    parent_id: int | None
    metrics: dict[str, float] = field(metadata=_json_col({}))
    config: dict[str, Any] = field(metadata=_json_col({}))
    created_at: float = 0.0
    published_at: float | None = None
    rel_path: str = field(default="", metadata={"column": False})
    """The path as stored: relative to the data directory (what listings and messages show);
    `path` is where the directory is now (resolved against the store's data directory)."""


def id_or_base(version: ModelVersion | None) -> int:
    """A version's id; 0 (the base model: no version live) for None."""
    return version.id if version is not None else 0


def _from_row(cls: type[T], row: dict[str, Any]) -> T:
    """A table row (sqlite-utils dict) -> dataclass `cls`, each field decoded as its metadata says;
    row columns the dataclass does not name are ignored."""
    kw = {}
    for f in fields(cls):
        if f.metadata.get("column", True) and f.name in row:
            decode = f.metadata.get("decode")
            kw[f.name] = decode(row[f.name]) if decode else row[f.name]
    return cls(**kw)


def _to_row(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Values for an insert into `cls`'s table, each encoded as its field's metadata says."""
    enc = {f.name: f.metadata["encode"] for f in fields(cls) if "encode" in f.metadata}
    return {k: enc[k](v) if k in enc else v for k, v in values.items()}


MAX_ID = 2**63 - 1  # SQLite's INTEGER range; Python would raise OverflowError beyond it


def _key(value: Any, what: str) -> int:
    """An id as SQLite can hold it, else NotFound (an id out of range or not a number cannot exist)."""
    try:
        key = int(value)
    except (TypeError, ValueError):
        raise NotFound(f"{what} {value!r} does not exist") from None
    if isinstance(value, bool) or not -MAX_ID - 1 <= key <= MAX_ID:
        raise NotFound(f"{what} {value!r} does not exist")
    return key


def _clamp(value: int) -> int:
    """A bound for a range query (`id > since_id`), clamped into SQLite's range."""
    return max(-MAX_ID - 1, min(MAX_ID, int(value)))


def _columns(obj: Any, *skip: str) -> dict[str, Any]:
    """A dataclass's stored fields as a dict (without `skip`, e.g. the id the insert assigns)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if f.metadata.get("column", True) and f.name not in skip}


def _where(**conds: Any) -> tuple[str | None, list[Any]]:
    """`a = ? and b = ?` over the conditions that are not None (None: no condition)."""
    given = {k: v for k, v in conds.items() if v is not None}
    return (" and ".join(f"{k} = ?" for k in given) or None), list(given.values())


def as_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (numpy arrays dropped) for JSON responses."""
    d = asdict(obj)
    return {k: v for k, v in d.items() if not isinstance(v, np.ndarray)}
