"""Paths stored relative to the data directory.

A version row names its directory relative to the data directory (``versions/<profile>/<name>``),
so the data directory can be moved, or opened through a relative ``--data-dir`` from any working
directory, and every row still finds its files. A path outside the data directory stays absolute.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

VERSIONS_DIR = "versions"


def real(path: str | Path) -> Path:
    """The absolute path with symlinks and ``..`` resolved (the path need not exist)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def to_stored(path: str | Path, data_dir: str | Path) -> str:
    """How a row stores `path` (absolute, or relative to the current working directory):
    relative to `data_dir` (POSIX separators) when it lies inside it, else absolute."""
    p, root = real(path), real(data_dir)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def resolve(stored: str, data_dir: str | Path) -> Path:
    """The directory a stored path names: a relative one is relative to `data_dir`."""
    p = Path(stored)
    return p if p.is_absolute() else Path(os.path.abspath(Path(data_dir) / p))


def version_tail(stored: str | Path) -> str | None:
    """``versions/<profile>/<name>`` from any spelling of a version path (absolute, relative to
    some other working directory, of a data directory since moved), or None."""
    parts = Path(os.path.normpath(str(stored))).parts
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] == VERSIONS_DIR:
            return "/".join(parts[i : i + 3])
    return None


def migrate_stored(stored: str, data_dir: str | Path, cwd: str | Path | None = None) -> str:
    """A path as older code wrote it -> relative to `data_dir` where it names a directory there:
    already relative to it; absolute or relative to `cwd` and inside it; or (a moved data
    directory, another working directory) its ``versions/<profile>/<name>`` exists under it.
    Anything else is kept as it was (nothing is guessed for a path that names nothing here)."""
    root = Path(data_dir)
    p = Path(stored)
    if not p.is_absolute() and (root / p).exists():
        return p.as_posix()
    as_written = p if p.is_absolute() else Path(cwd or os.getcwd()) / p
    inside = to_stored(as_written, root)
    if not Path(inside).is_absolute():
        return inside
    tail = version_tail(stored)
    if tail is not None and (root / tail).exists():
        return tail
    return stored


_SAFE_DIRNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def profile_dirname(profile_id: str) -> str:
    """The folder (or file) name of a profile under versions/ or locks/: the id itself when it is
    a plain name, else a hash of it (a profile such as "../x" or "a/b" must neither escape the
    folder nor nest a level deeper, where collect_garbage would take its versions for orphans)."""
    if _SAFE_DIRNAME.fullmatch(profile_id) and not profile_id.startswith("p-"):
        return profile_id
    return "p-" + hashlib.sha256(profile_id.encode("utf-8")).hexdigest()[:16]
