"""Versioned model directories with atomic publish.

A version (policy: LoRA adapter + value head; reward: reward model) is written by a callback into
a temporary directory beside its final place, every file is fsynced, the directory is renamed
into place (atomic on one filesystem), and only then is a row added to ``model_versions``. A
reader therefore never sees half a version: either the row is absent, or the directory is whole.

Layout of a policy version directory::

    adapter/              peft adapter (adapter_config.json, adapter_model.safetensors)
    value_head.safetensors
    metrics.json          namespaced metrics of the update that produced it
    config.json           the configs used (RL, LoRA, generation)
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from . import paths
from .killpoints import kill_point
from .paths import VERSIONS_DIR, profile_dirname
from .store import ModelVersion, Store

EXPORTS_DIR = "exports"


def versions_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / VERSIONS_DIR


def exports_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / EXPORTS_DIR


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        dfd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_atomic_dir(final: Path, writer: Callable[[Path], None]) -> Path:
    """Call writer(tmp_dir), fsync, then rename tmp_dir to `final`. On any error the temporary
    directory is removed and `final` does not exist."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer(tmp)
        _fsync_tree(tmp)
        os.rename(tmp, final)
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def new_version_dir(data_dir: str | Path, kind: str, profile_id: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return versions_root(data_dir) / profile_dirname(profile_id) / f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}"


def save_version(
    store: Store,
    data_dir: str | Path,
    *,
    kind: str,
    profile_id: str,
    writer: Callable[[Path], None],
    metrics: dict[str, float] | None = None,
    config: dict[str, Any] | None = None,
    parent_id: int | None = None,
    publish: bool = False,
) -> ModelVersion:
    """Write a version directory atomically, then record it (published or as a candidate)."""
    metrics = metrics or {}
    config = config or {}

    def write_all(tmp: Path) -> None:
        writer(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))

    final = write_atomic_dir(new_version_dir(data_dir, kind, profile_id), write_all)
    kill_point(f"version.{kind}.written")  # the directory is whole, no row names it yet
    try:
        v = store.add_version(
            profile_id=profile_id,
            kind=kind,
            path=str(final),
            metrics=metrics,
            config=config,
            parent_id=parent_id,
            status="published" if publish else "candidate",
        )
    except BaseException:
        # the row did not land: a directory nobody references must not linger
        shutil.rmtree(final, ignore_errors=True)
        raise
    kill_point(f"version.{kind}.recorded")
    return v


RESTORABLE = ("published", "rolled_back", "candidate")
"""Statuses whose directory may be served, rolled back to or exported (when it exists)."""
LEARNER_CANDIDATE = {"created_by": "learner"}
"""Config the learner gives its candidates, so `abandon_candidates` takes only those (a candidate
someone made by hand, e.g. `inkloop rl` without --publish, is theirs to keep)."""


def available(v: ModelVersion) -> bool:
    """Whether a version may be loaded, rolled back to or exported: a restorable status (not
    discarded, abandoned, or marked for deletion and maybe half-deleted) and its directory there."""
    return v.status in RESTORABLE and Path(v.path).is_dir()


def _delete_marked(store: Store, versions: list[ModelVersion], final_status: str | None = None) -> list[int]:
    """Delete the directories of rows already marked (deleting / abandoned), then (if given) settle
    their status (deleting -> discarded). Returns the ids whose directories were there."""
    removed = []
    for v in versions:
        if Path(v.path).exists():
            shutil.rmtree(v.path, ignore_errors=True)
            removed.append(v.id)
            kill_point(f"delete.{v.kind}.{'pruned' if final_status else 'abandoned'}")  # files gone, row marked
        if final_status is not None:
            store.set_version_status(v.id, final_status)
    return removed


def prune_versions(store: Store, profile_id: str, kind: str, keep: int) -> list[int]:
    """Delete the directories of all but the newest `keep` versions of a kind (the live one is
    always kept); their rows stay, marked discarded, so history and metrics survive.

    The live check and the mark ("deleting") happen in one write transaction, before any file is
    deleted: a concurrent rollback either made its target live first (then it is kept) or finds it
    marked and refuses; a kill during the deletion leaves a marked row that is never offered again
    and that `collect_garbage` finishes."""
    with store.transaction():
        live = store.live_version(profile_id, kind)
        kept = [v for v in store.versions(profile_id, kind) if v.status in RESTORABLE]
        doomed = [v for v in kept[keep:] if live is None or v.id != live.id]
        for v in doomed:
            store.set_version_status(v.id, "deleting")
        if doomed:
            kill_point(f"prune.{kind}.marking")  # inside the transaction
    if doomed:
        kill_point(f"prune.{kind}.marked")
    return _delete_marked(store, doomed, "discarded")


def abandon_candidates(store: Store, profile_id: str, kind: str | None = None) -> list[int]:
    """Mark the candidates a learner of this profile left unevaluated (it was killed mid-cycle)
    abandoned and delete their directories; they are never offered for rollback or export. Call it
    at learner start, holding the profile's learner lock (storage.locks), so no cycle of a live
    learner is running. Only candidates with `LEARNER_CANDIDATE` in their config are taken.
    Returns the ids abandoned now."""
    with store.transaction():
        left = [v for v in store.versions(profile_id, kind) if v.status == "candidate"
                and all(v.config.get(k) == x for k, x in LEARNER_CANDIDATE.items())]
        for v in left:
            store.set_version_status(v.id, "abandoned")
    _delete_marked(store, left)
    return [v.id for v in left]


def finish_deletions(store: Store) -> list[int]:
    """Finish what a kill interrupted: directories of rows marked deleting or abandoned."""
    marked = [v for v in store.versions() if v.status in ("deleting", "abandoned") and Path(v.path).exists()]
    removed = _delete_marked(store, [v for v in marked if v.status == "deleting"], "discarded")
    return removed + _delete_marked(store, [v for v in marked if v.status == "abandoned"])


def fallback_version(store: Store, profile_id: str, kind: str = "policy",
                     exclude: Iterable[int] = ()) -> ModelVersion | None:
    """The newest published version whose directory is there, skipping `exclude` (versions that
    failed to load): what the generator serves when the live version cannot load (None: the base
    model). The live version itself comes first when it is not excluded."""
    skip = set(exclude)
    for v in store.published_versions(profile_id, kind):
        if v.id not in skip and available(v):
            return v
    return None


def overwrite_refusal(store: Store, out: str | Path) -> str | None:
    """Why replacing `out` (an export's folder with --overwrite, a file `feedback export` writes)
    would destroy inkloop's data, or None:
    it holds the data directory, lies inside it other than in a folder under exports/, or holds
    (or lies inside) a version directory."""
    o, data = paths.real(out), paths.real(store.data_dir)
    exports = paths.real(exports_root(data))
    if data.is_relative_to(o):
        return f"{out} holds inkloop's data directory; choose another output folder"
    if o.is_relative_to(data) and not (o.is_relative_to(exports) and o != exports):
        return (f"{out} is inside inkloop's data directory, where only what lies under "
                f"{EXPORTS_DIR}/ may be replaced; choose another output path")
    for v in store.versions():
        d = paths.real(v.path)
        if d.is_relative_to(o) or o.is_relative_to(d):
            return f"{out} holds model version {v.id}; choose another output folder"
    return None


# ----------------------------------------------------------------------------- publish, discard, rollback
class VersionError(ValueError):
    """A version operation that cannot be done (wrong kind, missing directory, other profile)."""


def publish_version(store: Store, version_id: int) -> ModelVersion:
    """Make a fully written version live (its directory must exist: a row never points at nothing)."""
    v = store.get_version(version_id)
    if v.status not in RESTORABLE:
        raise VersionError(f"version {version_id} is {v.status}; it cannot be published")
    if not Path(v.path).is_dir():
        raise VersionError(f"version {version_id} has no directory at {v.rel_path}; it cannot be published")
    kill_point(f"publish.{v.kind}.before")
    v = store.set_version_status(version_id, "published")
    kill_point(f"publish.{v.kind}.done")
    return v


def discard_version(store: Store, version_id: int, delete_dir: bool = True) -> ModelVersion:
    """Mark a candidate discarded and (by default) delete its directory. The row and its metrics stay."""
    v = store.set_version_status(version_id, "discarded")
    if delete_dir and Path(v.path).exists():
        shutil.rmtree(v.path, ignore_errors=True)
    return v


def rollback_targets(store: Store, profile_id: str, kind: str = "policy") -> list[ModelVersion]:
    """Versions one can roll back to: not the live one, restorable, and their directory still exists."""
    live = store.live_version(profile_id, kind)
    return [v for v in store.versions(profile_id, kind) if (live is None or v.id != live.id) and available(v)]


def rollback(
    store: Store, profile_id: str, target_id: int | None = None, kind: str = "policy"
) -> ModelVersion | None:
    """Roll the live version back.

    The current live version is marked ``rolled_back``. With `target_id` that version is
    republished (it becomes live); with ``target_id=None`` the previous still-published version
    becomes live again (or the base model, None, when there is none); ``target_id=0`` means the
    base model (every published version of the kind is marked rolled_back).
    Returns the version that is live afterwards (None = the base model). All status changes land
    in one transaction: a concurrent publish or rollback (learner process, API) never interleaves."""
    with store.transaction():
        return _rollback(store, profile_id, target_id, kind)


def _rollback(store: Store, profile_id: str, target_id: int | None, kind: str) -> ModelVersion | None:
    live = store.live_version(profile_id, kind)
    if target_id is not None and target_id != 0:
        target = store.get_version(target_id)
        if target.profile_id != profile_id or target.kind != kind:
            raise VersionError(f"version {target_id} is not a {kind} version of profile {profile_id!r}")
        if not available(target):
            raise VersionError(f"version {target_id} was discarded, abandoned or pruned; it cannot be restored")
        if live is not None and live.id == target.id:
            return live
        if live is not None:
            store.set_version_status(live.id, "rolled_back")
        return store.set_version_status(target.id, "published")
    if live is None:
        if target_id is None:
            raise VersionError("nothing to roll back: the base model is live")
        return None
    store.set_version_status(live.id, "rolled_back")
    if target_id == 0:
        for v in store.versions(profile_id, kind):
            if v.status == "published":
                store.set_version_status(v.id, "rolled_back")
        return None
    now_live = store.live_version(profile_id, kind)
    while now_live is not None and not Path(now_live.path).is_dir():  # a pruned one cannot serve
        store.set_version_status(now_live.id, "rolled_back")
        now_live = store.live_version(profile_id, kind)
    return now_live


def _named_by_rows(store: Store) -> tuple[set[Path], set[str]]:
    """Every directory some version row names, however its path was written: the resolved
    directories, and their ``versions/<profile>/<name>`` tails (which survive a moved data directory,
    a relative path written from another working directory, a symlinked spelling)."""
    dirs, tails = set(), set()
    for v in store.versions():
        for spelling in (v.path, v.rel_path):
            dirs.add(paths.real(spelling if Path(spelling).is_absolute() else store.resolve_path(spelling)))
            tail = paths.version_tail(spelling)
            if tail is not None:
                tails.add(tail)
    return dirs, tails


def collect_garbage(store: Store, data_dir: str | Path, min_age_s: float = 3600.0) -> list[str]:
    """Remove what a crash (kill -9, power loss) can leave behind: temporary ``.tmp-*`` directories
    and version directories no row refers to, once older than `min_age_s` (a younger one may be a
    version another process is writing right now). A directory that any row names, under any
    spelling of its path, is never removed as an orphan; the directories of rows marked deleting
    or abandoned (a kill interrupted their deletion) are deleted. Returns the removed orphan paths."""
    now = time.time()
    root = versions_root(data_dir)
    if not root.is_dir():
        return []
    finish_deletions(store)
    named, tails = _named_by_rows(store)
    removed = []
    for profile_dir in root.iterdir():
        if not profile_dir.is_dir():
            continue
        for d in profile_dir.iterdir():
            try:
                young = now - d.stat().st_mtime < min_age_s
            except FileNotFoundError:
                continue
            if young:
                continue
            tail = f"{VERSIONS_DIR}/{profile_dir.name}/{d.name}"
            orphan = d.is_dir() and paths.real(d) not in named and tail not in tails
            if d.name.startswith(".tmp-") or orphan:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
    return removed
