"""Export what inkloop learned: a merged model, the adapter, the reward model, the feedback.

- ``merged``: the LoRA adapter of a policy version merged into the base weights (peft
  ``merge_and_unload``), saved with the tokenizer as safetensors. Plain
  ``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` loads it and gives the same logits as
  the live policy. A README.md model card lists the training metrics and feedback counts.
- ``adapter``: the peft adapter directory and the value head alone (plus metrics/config).
- ``reward``: the reward model directory of a reward version.
- ``feedback``: the TRL-style datasets (see storage.jsonl, reward.datasets).

The CLI may write anywhere the person names; the UI and the API call `export_to_exports_dir`,
which only writes under ``<data_dir>/exports`` (a caller never chooses the path) and zips the
result for download. There, one export runs at a time per data directory (another is refused
with `ExportBusy`), and each export first clears what earlier ones left: temporary zips, folders
whose zip never got written, and all but the newest `keep` exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

from assistant.lm.adapters import ADAPTER_SUBDIR
from reward import datasets
from storage.artifacts import available, exports_root, overwrite_refusal
from storage.records import ModelVersion
from storage.store import Store

EXPORT_KINDS = ("merged", "adapter", "reward", "feedback")
VALUE_HEAD_FILE = "value_head.safetensors"


class ExportError(ValueError):
    """An export that cannot be done (no such version, nothing live, unknown kind). Nothing written."""


class ExportBusy(ExportError):
    """Another export into the same exports folder is running: one at a time."""


_SLOTS: dict[str, threading.Lock] = {}
_SLOTS_LOCK = threading.Lock()


def _export_slot(root: Path) -> threading.Lock:
    """The one lock of an exports folder (per process: the server's UI and API share it)."""
    key = str(root.resolve())
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(key, threading.Lock())


def clean_exports(data_dir: str | Path, keep: int | None = 5) -> list[str]:
    """Remove temporary zips, export folders without their zip (an interrupted export), and all
    but the newest `keep` exports (zip and folder; None keeps every finished one). Returns the
    names removed."""
    root = exports_root(data_dir)
    if not root.is_dir():
        return []
    removed: list[str] = []
    for tmp in root.glob(".tmp-*"):
        tmp.unlink(missing_ok=True) if tmp.is_file() else shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp.name)
    zips = sorted((z for z in root.glob("*.zip") if not z.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    keep = len(zips) if keep is None else max(0, int(keep))
    for z in zips[keep:]:
        z.unlink(missing_ok=True)
        removed.append(z.name)
    kept = {z.name[:-4] for z in zips[:keep]}
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith(".") and d.name not in kept:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


# ----------------------------------------------------------------------------- helpers
def base_model_path(model: torch.nn.Module) -> str:
    """The local directory a (possibly peft-wrapped) model was loaded from."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(base.config, "_name_or_path", "") or getattr(base, "name_or_path", "")
    if not path or not Path(path).is_dir():
        raise ExportError("the base model's directory is unknown; pass the model path explicitly")
    return str(path)


def resolve_version(store: Store, profile_id: str, kind: str, version_id: int | None) -> ModelVersion:
    """The named version (checked to be of `kind` and to still have its directory), or the live one."""
    if version_id is None or version_id == 0:
        v = store.live_version(profile_id, kind)
        if v is None:
            what = "policy (the base model is live)" if kind == "policy" else "reward model"
            raise ExportError(f"there is no published {what} to export for profile {profile_id!r}; name a version")
    else:
        v = store.get_version(int(version_id))  # NotFound for an unknown id
        if v.kind != kind:
            raise ExportError(f"version {v.id} is a {v.kind} version, not a {kind} version")
        if v.profile_id != profile_id:
            raise ExportError(f"version {v.id} belongs to another profile, not {profile_id!r}")
    if not available(v):
        raise ExportError(f"version {v.id} was pruned, discarded or abandoned ({v.status}; {v.rel_path})")
    return v


def _prepare_out(out_dir: str | Path, overwrite: bool, store: Store) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is not a directory; name a folder to export into")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} exists and is not empty (use --overwrite to replace it)")
        if (refusal := overwrite_refusal(store, out)) is not None:  # the database, versions, ...
            raise ExportError(refusal)
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the way (not a directory), no permission, ...
        raise ExportError(f"cannot create {out}: {e.strerror or e}") from None
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(
    *, version: ModelVersion, base_path: str, feedback_counts: dict[str, int], what: str, dtype: str = ""
) -> str:
    """A README.md for an exported model: where it came from and how it was trained."""
    lines = [
        "---",
        "library_name: transformers" if what == "merged" else "library_name: peft",
        "tags: [inkloop, rlhf, lora]",
        "---",
        "",
        f"# inkloop policy version {version.id} ({what})",
        "",
        f"A writing assistant policy fine-tuned with inkloop from one person's ratings (profile "
        f"`{version.profile_id}`), by reinforcement learning against a learned reward model on a LoRA "
        f"adapter{' that is merged into the base weights here' if what == 'merged' else ''}.",
        "",
        f"- base model: `{Path(base_path).name}` ({base_path})",
        f"- version: {version.id}, status {version.status}, parent {version.parent_id or 'base model'}",
        f"- created: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(version.created_at))} UTC",
    ]
    if dtype:
        lines.append(f"- weights dtype: {dtype}")
    lines += ["", "## Feedback it learned from", "", "| kind | count |", "|---|---|"]
    lines += [f"| {k} | {n} |" for k, n in sorted(feedback_counts.items())]
    lines += [f"| total | {sum(feedback_counts.values())} |", "", "## Training metrics", ""]
    if version.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(version.metrics.items())]
    else:
        lines.append("(none recorded)")
    lines += ["", "## Use", "", "```python"]
    if what == "merged":
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained('THIS_DIR')",
            "tokenizer = AutoTokenizer.from_pretrained('THIS_DIR')",
        ]
    else:
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f"base = AutoModelForCausalLM.from_pretrained('{base_path}')",
            "model = PeftModel.from_pretrained(base, 'THIS_DIR/adapter')",
        ]
    lines += ["```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the four exports
def export_merged(
    store: Store, version: ModelVersion, base_path: str | Path, out_dir: str | Path,
    dtype: torch.dtype | None = None, overwrite: bool = False,
) -> Path:
    """Merge the version's LoRA adapter into a fresh copy of the base model and save it with the
    tokenizer. `dtype` None keeps the dtype the base checkpoint was saved in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(version.path) / ADAPTER_SUBDIR
    if not (adapter / "adapter_config.json").exists():
        raise ExportError(f"version {version.id} has no peft adapter")
    out = _prepare_out(out_dir, overwrite, store)
    try:
        # merge in float32 so the merged weights equal W + BA as the live policy computes it
        base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
        target_dtype = dtype or _checkpoint_dtype(base_path)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        merged = merged.to(target_dtype)
        merged.save_pretrained(out, safe_serialization=True)
        tok = AutoTokenizer.from_pretrained(str(base_path))
        tok.save_pretrained(out)
        (out / "README.md").write_text(model_card(
            version=version, base_path=str(base_path), feedback_counts=store.feedback_counts_by_kind(version.profile_id),
            what="merged", dtype=str(target_dtype).replace("torch.", ""),
        ))
        (out / "inkloop_metrics.json").write_text(json.dumps(version.metrics, indent=2, sort_keys=True))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _checkpoint_dtype(base_path: str | Path) -> torch.dtype:
    """The dtype recorded in the base checkpoint's config.json (float32 when it says nothing)."""
    try:
        cfg = json.loads((Path(base_path) / "config.json").read_text())
    except (OSError, ValueError):
        return torch.float32
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def export_adapter(store: Store, version: ModelVersion, out_dir: str | Path, base_path: str | Path = "",
                   overwrite: bool = False) -> Path:
    """The peft adapter + value head (+ metrics.json, config.json) of a policy version."""
    src = Path(version.path)
    if not (src / ADAPTER_SUBDIR / "adapter_config.json").exists():
        raise ExportError(f"version {version.id} has no peft adapter")
    out = _prepare_out(out_dir, overwrite, store)
    shutil.copytree(src / ADAPTER_SUBDIR, out / ADAPTER_SUBDIR)
    for name in (VALUE_HEAD_FILE, "metrics.json", "config.json"):
        if (src / name).exists():
            shutil.copy2(src / name, out / name)
    (out / "README.md").write_text(model_card(
        version=version, base_path=str(base_path or "the base model"),
        feedback_counts=store.feedback_counts_by_kind(version.profile_id), what="adapter",
    ))
    return out


def export_reward(store: Store, version: ModelVersion, out_dir: str | Path, overwrite: bool = False) -> Path:
    """A copy of a reward-model version directory (config, head weights, metrics)."""
    out = _prepare_out(out_dir, overwrite, store)
    shutil.rmtree(out)
    shutil.copytree(version.path, out)
    return out


def export_feedback(store: Store, profile_id: str, out_dir: str | Path, overwrite: bool = False) -> Path:
    """TRL-style JSONL datasets of the profile's feedback (reward.datasets): preference.jsonl
    (prompt/chosen/rejected), ratings.jsonl (prompt/completion/rating), unpaired.jsonl
    (prompt/completion/label), plus a README with the counts."""

    out = _prepare_out(out_dir, overwrite, store)
    counts = {fmt: datasets.export_feedback(store, fmt, out / f"{fmt}.jsonl", profile_id) for fmt in datasets.FORMATS}
    lines = [f"# inkloop feedback of profile `{profile_id}`", "", "| file | rows |", "|---|---|"]
    lines += [f"| {fmt}.jsonl | {n} |" for fmt, n in counts.items()]
    lines += ["", "Load with `datasets.load_dataset('json', data_files='preference.jsonl')`.", ""]
    (out / "README.md").write_text("\n".join(lines))
    return out


def export(
    store: Store, *, what: str, out_dir: str | Path, profile_id: str = "default", version_id: int | None = None,
    base_path: str | Path | None = None, dtype: torch.dtype | None = None, overwrite: bool = False,
) -> Path:
    """One entry point for the CLI, the API and the UI."""
    if what not in EXPORT_KINDS:
        raise ExportError(f"unknown export {what!r}; use one of {', '.join(EXPORT_KINDS)}")
    if what == "feedback":
        return export_feedback(store, profile_id, out_dir, overwrite)
    if what == "reward":
        return export_reward(store, resolve_version(store, profile_id, "reward", version_id), out_dir, overwrite)
    v = resolve_version(store, profile_id, "policy", version_id)
    if what == "adapter":
        return export_adapter(store, v, out_dir, base_path or "", overwrite)
    if not base_path:
        raise ExportError("a merged export needs the base model directory")
    return export_merged(store, v, base_path, out_dir, dtype, overwrite)


# ----------------------------------------------------------------------------- exports for download
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


def export_to_exports_dir(
    store: Store, data_dir: str | Path, *, what: str, profile_id: str = "default", version_id: int | None = None,
    base_path: str | Path | None = None, make_zip: bool = True, keep: int = 5,
) -> dict[str, Any]:
    """Export into ``<data_dir>/exports/<what>-v<id>-<time>`` (never a caller-chosen path) and zip it.
    One at a time (`ExportBusy` while another runs); keeps the newest `keep` exports.
    Returns ``{"name", "dir", "zip", "bytes"}``."""
    if what not in EXPORT_KINDS:
        raise ExportError(f"unknown export {what!r}; use one of {', '.join(EXPORT_KINDS)}")
    if version_id is not None and int(version_id) < 0:
        raise ExportError("version must be a positive id (or omitted for the live one)")
    root = exports_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    slot = _export_slot(root)
    if not slot.acquire(blocking=False):
        raise ExportBusy("another export is running; try again when it has finished")
    try:
        clean_exports(data_dir, keep=None)  # leftovers of interrupted exports only
        result = _export_zip(store, root, what=what, profile_id=profile_id, version_id=version_id,
                             base_path=base_path, make_zip=make_zip)
        if make_zip:  # only once this one exists: a failed export removes nothing
            clean_exports(data_dir, keep=keep)
        return result
    finally:
        slot.release()


def _export_zip(store: Store, root: Path, *, what: str, profile_id: str, version_id: int | None,
                base_path: str | Path | None, make_zip: bool) -> dict[str, Any]:
    tag = "all" if what == "feedback" else (f"v{int(version_id)}" if version_id else "live")
    name = f"{what}-{profile_id}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    out = root / name
    n = 1
    while out.exists() or out.with_name(out.name + ".zip").exists():
        out = root / f"{name}-{n}"
        n += 1
    zip_path = out.with_name(out.name + ".zip")
    try:
        export(store, what=what, out_dir=out, profile_id=profile_id, version_id=version_id, base_path=base_path)
        result: dict[str, Any] = {"name": out.name, "dir": str(out), "zip": None, "bytes": 0}
        if make_zip:
            # zip beside, then rename: list_exports never offers a half-written zip for download
            tmp = Path(shutil.make_archive(str(root / f".tmp-{out.name}"), "zip", root_dir=out))
            os.replace(tmp, zip_path)
            result["zip"] = str(zip_path)
            result["bytes"] = zip_path.stat().st_size
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        (root / f".tmp-{out.name}.zip").unlink(missing_ok=True)
        zip_path.unlink(missing_ok=True)
        raise
    return result


def list_exports(data_dir: str | Path) -> list[dict[str, Any]]:
    root = exports_root(data_dir)
    if not root.is_dir():
        return []
    out = []
    for z in sorted(root.glob("*.zip"), key=lambda p: p.stat().st_mtime, reverse=True):
        if z.name.startswith("."):  # a zip being written
            continue
        out.append({"name": z.name, "bytes": z.stat().st_size, "created_at": z.stat().st_mtime})
    return out


def export_zip_path(data_dir: str | Path, name: str) -> Path:
    """The zip called `name` inside the exports folder; refuses anything that could leave it."""
    if not _SAFE.match(name or "") or not name.endswith(".zip") or ".." in name:
        raise ExportError("invalid export name")
    root = exports_root(data_dir).resolve()
    p = (root / name).resolve()
    if p.parent != root or not p.is_file():
        raise ExportError(f"no export called {name!r}")
    return p
