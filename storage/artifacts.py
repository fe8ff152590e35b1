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
from typing import Any, Callable

from .store import ModelVersion, Store

VERSIONS_DIR = "versions"
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
    return versions_root(data_dir) / profile_id / f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}"


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
    return store.add_version(
        profile_id=profile_id,
        kind=kind,
        path=str(final),
        metrics=metrics,
        config=config,
        parent_id=parent_id,
        status="published" if publish else "candidate",
    )


def prune_versions(store: Store, profile_id: str, kind: str, keep: int) -> list[int]:
    """Delete the directories of all but the newest `keep` versions of a kind (the live one is
    always kept); their rows stay, marked discarded, so history and metrics survive."""
    live = store.live_version(profile_id, kind)
    removed = []
    for v in store.versions(profile_id, kind)[keep:]:
        if live is not None and v.id == live.id:
            continue
        if Path(v.path).exists():
            shutil.rmtree(v.path, ignore_errors=True)
            removed.append(v.id)
        if v.status != "discarded":
            store.set_version_status(v.id, "discarded")
    return removed
