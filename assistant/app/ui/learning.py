"""The Learning and Export tabs (passed to assistant.app.ui.writer.build_ui by `inkloop serve`).

Learning: the learner's phase and progress (polled from the store by a gr.Timer, so it survives a
reload), pause / resume / train now, plots per version of reward-model accuracy, mean reward, KL
and win-rate, feedback counts by kind, the version table with rollback, the guard events, and the
latest evaluation report (``inkloop eval ...`` writes them under <data_dir>/reports: its summary and
plots, see reward.report).
Export: merged model / adapter / reward model / feedback as a zip to download (always written
under <data_dir>/exports).

The functions above the builders are plain data functions (store in, strings/DataFrames out),
tested without a browser. No torch and no SQL here.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from assistant.app.export import ExportError, base_model_path, export_to_exports_dir
from assistant.app.services import Services
from reward.eval.report import latest_report, reports_root
from reward.loop.learner import send_command
from storage import artifacts
from storage.records import StoreError

PLOTS = (
    ("rm/accuracy", "reward", "Reward-model accuracy (held-out pairs)"),
    ("eval/reward", "policy", "Mean reward on held-out prompts"),
    ("eval/kl", "policy", "KL to the base model"),
    ("eval/win_rate", "policy", "Win-rate against the previous live version"),
)
VERSION_COLUMNS = ["version", "status", "live", "created", "reward", "win-rate", "KL", "agreement", "RL steps"]
EVENT_COLUMNS = ["time", "kind", "version", "reason"]


def _profile(services: Services, profile: str | None) -> str:
    return (profile or "").strip() or services.default_profile


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    s = max(0.0, time.time() - float(t))
    return f"{s:.0f} s ago" if s < 120 else (f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago")


# ----------------------------------------------------------------------------- data functions
def learner_status(services: Services, profile: str | None) -> tuple[str, float]:
    """(markdown, progress 0..1) of the learner's state."""
    p = _profile(services, profile)
    st = services.store.learner_state(p)
    live = services.store.live_version(p, "policy")
    rm = services.store.live_version(p, "reward")
    live_txt = (f"version **{live.id}**" if live else "the **base model**") + \
        (f", reward model version **{rm.id}**" if rm else ", no reward model yet")
    if not st:
        return (f"**Learner** of profile `{p}`: has not run yet (start it with `inkloop serve` or `inkloop learn`). "
                f"Live policy: {live_txt}.", 0.0)
    phase = "paused" if st.get("paused") else (st.get("phase") or "idle")
    hb = st.get("heartbeat")
    # a phase reports at least once per RL step; on a busy 2-core machine a step can take minutes
    stale = hb is not None and time.time() - float(hb) > 600 and phase not in ("stopped",)
    lines = [
        f"**Learner** of profile `{p}`: {phase}{' (no heartbeat for a while: is it running?)' if stale else ''} · "
        f"heartbeat {_ago(hb)} · live policy: {live_txt}",
        f"{st.get('message') or ''}",
    ]
    if st.get("error") and phase == "error":
        lines.append(f"⚠️ last error: `{st['error']}`")
    m = st.get("metrics") or {}
    if m:
        keys = [k for k in ("learner/cycles", "learner/new_feedback", "rm/accuracy", "eval/win_rate", "eval/kl") if k in m]
        lines.append(" · ".join(f"{k} = {m[k]:.3g}" for k in keys))
    return "\n\n".join(x for x in lines if x), float(st.get("progress") or 0.0)


def metric_frame(services: Services, profile: str | None, name: str, kind: str) -> pd.DataFrame:
    """One row per version that has `name` in its metrics: version, value, status."""
    rows = [
        {"version": v.id, "value": float(v.metrics[name]), "status": v.status}
        for v in services.store.versions(_profile(services, profile), kind)
        if isinstance(v.metrics.get(name), (int, float))
    ]
    return pd.DataFrame(rows or [], columns=["version", "value", "status"]).sort_values("version")


def feedback_frame(services: Services, profile: str | None) -> pd.DataFrame:
    counts = services.store.feedback_counts_by_kind(_profile(services, profile))
    return pd.DataFrame([{"kind": k, "count": n} for k, n in counts.items()], columns=["kind", "count"])


def versions_frame(services: Services, profile: str | None) -> pd.DataFrame:
    p = _profile(services, profile)
    live = services.store.live_version(p, "policy")

    def f(m: dict, k: str) -> Any:
        v = m.get(k)
        return round(float(v), 4) if isinstance(v, (int, float)) else None

    rows = []
    for v in services.store.versions(p, "policy"):
        rows.append([
            v.id, v.status + ("" if Path(v.path).is_dir() else " (pruned)"), "●" if live and v.id == live.id else "",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_at)),
            f(v.metrics, "eval/reward"), f(v.metrics, "eval/win_rate"), f(v.metrics, "eval/kl"),
            f(v.metrics, "eval/agreement"), f(v.metrics, "rl/steps"),
        ])
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


def rollback_choices(services: Services, profile: str | None) -> list[tuple[str, int]]:
    p = _profile(services, profile)
    choices = [(f"version {v.id} ({v.status})", v.id) for v in artifacts.rollback_targets(services.store, p)]
    if services.store.live_version(p, "policy") is not None:
        choices.append(("the base model (no adapter)", 0))
    return choices


def events_frame(services: Services, profile: str | None, limit: int = 50) -> pd.DataFrame:
    rows = [
        [time.strftime("%m-%d %H:%M:%S", time.localtime(e["created_at"])), e["kind"], e["version_id"] or "", e["reason"]]
        for e in services.store.events(_profile(services, profile), limit=limit)
    ]
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def do_rollback(services: Services, profile: str | None, target: int | None) -> str:
    p = _profile(services, profile)
    if target is None:
        return "Choose a version to roll back to."
    try:
        now = artifacts.rollback(services.store, p, int(target))
    except (artifacts.VersionError, StoreError) as e:
        return f"⚠️ {e}"
    what = f"version {now.id}" if now else "the base model"
    services.store.add_event("rollback", f"rolled back to {what} (ui)", p, now.id if now else None)
    return f"Rolled back: {what} is live. The next suggestion uses it."


def do_learner_command(services: Services, profile: str | None, action: str) -> str:

    send_command(services.store, _profile(services, profile), action)
    return {"pause": "Paused: no new cycles will start.", "resume": "Resumed.",
            "train_now": "A training cycle will start within a few seconds."}[action]


def do_export(services: Services, profile: str | None, what: str, version: Any) -> tuple[str, str | None]:
    """(message, zip path or None)."""
    p = _profile(services, profile)
    data_dir = services.store.path.parent
    try:
        vid = int(version) if version not in (None, "", 0, "live") else None
        base = base_model_path(services.generator.base_model) if what == "merged" else None
        res = export_to_exports_dir(services.store, data_dir, what=what, profile_id=p, version_id=vid, base_path=base,
                                    keep=services.limits.keep_exports)
    except (ExportError, ValueError) as e:
        return f"⚠️ {e}", None
    return f"Exported **{what}** ({res['bytes'] / 1e6:.1f} MB) → `{res['name']}.zip`", res["zip"]


_DOWNLOAD_DIR: Path | None = None


def downloadable(path: str | Path) -> str:
    """Gradio serves only files in the working or temp directory (or allowed_paths set at launch):
    offer the export through a hard link (a copy across filesystems) in one temp folder per
    process, which keeps only the latest download so merged models do not pile up in /tmp."""
    import os
    import shutil
    import tempfile

    global _DOWNLOAD_DIR
    if _DOWNLOAD_DIR is None or not _DOWNLOAD_DIR.is_dir():
        _DOWNLOAD_DIR = Path(tempfile.mkdtemp(prefix="inkloop-export-"))
    for old in _DOWNLOAD_DIR.iterdir():
        old.unlink(missing_ok=True)
    src = Path(path)
    dst = _DOWNLOAD_DIR / src.name
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return str(dst)


REPORT_HELP = (
    "No evaluation report yet in `{root}`. Make one from a terminal (same `--data-dir`), then press "
    "**Open latest report**:\n\n"
    "- `inkloop eval compare-rewards --rater concise --budget 24`: the simulated-rater cycle once per reward design;\n"
    "- `inkloop eval sweep --param lr=1e-5,5e-5 --param kl=0.02,0.1 --rater concise --budget 24`: a hyper-parameter sweep;\n"
    "- `inkloop eval --version V`: the quality of one policy version."
)
_SERVED_REPORTS: dict[str, Path] = {}
"""report folder -> the temp folder its plots are offered from (one per process and report)."""


def _summary_for_ui(md: str) -> str:
    """The report's summary.md without its "## Plots" section: its images are links relative to
    the report folder, which the browser cannot follow; the gallery shows the plots instead."""
    out, skipping = [], False
    for line in md.splitlines():
        if line.strip().startswith("## "):
            skipping = line.strip() == "## Plots"
        if not skipping and not re.fullmatch(r"\s*!\[[^\]]*\]\([^)]*\)\s*", line):
            out.append(line)
    return "\n".join(out).rstrip() + "\n"


def served_plots(report_path: str | Path, plots: list[str]) -> list[str]:
    """The report's PNGs as paths Gradio will serve. Gradio 6 serves only files in the working or
    temp directory (or launch()'s allowed_paths, which mount_gradio_app resets); the data dir is
    usually ~/.inkloop, so, like the Export tab, the plots are offered through hard links (copies
    across filesystems) in a temp folder, made once per report and process."""
    import os
    import shutil
    import tempfile

    key = str(Path(report_path).resolve())
    dst_dir = _SERVED_REPORTS.get(key)
    if dst_dir is None or not dst_dir.is_dir():
        dst_dir = Path(tempfile.mkdtemp(prefix=f"inkloop-report-{Path(report_path).name}-"))
        _SERVED_REPORTS[key] = dst_dir
    out = []
    for src in map(Path, plots):
        dst = dst_dir / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        out.append(str(dst))
    return out


def report_view(data_dir: str | Path) -> tuple[str, str, list[tuple[str, str]]]:
    """(header Markdown, summary Markdown, gallery items [(png path, caption)]) of the newest report
    under data_dir/reports; with no report, a message saying how to make one, "" and []."""

    try:
        rep = latest_report(data_dir)
    except OSError as e:  # unreadable folder or summary: say so, do not break the tab
        return f"⚠️ Could not read the reports in `{reports_root(data_dir)}`: {e}", "", []
    if rep is None:
        return REPORT_HELP.format(root=reports_root(data_dir)), "", []
    paths = served_plots(rep["path"], rep["plots"])
    header = (f"**Report:** `{rep['name']}` (kind: {rep['kind'] or '?'}) · folder `{rep['path']}` · "
              f"{len(paths)} plot{'s' if len(paths) != 1 else ''}"
              + (f" · raw results `{Path(rep['results_path']).name}`" if rep.get("results_path") else ""))
    return header, _summary_for_ui(rep["summary"]), [(p, Path(p).stem) for p in paths]


def open_latest_report(services: Services) -> tuple[str, str, list[tuple[str, str]]]:
    """report_view of the services' data dir (the folder of its database)."""
    return report_view(services.store.path.parent)


def version_choices(services: Services, profile: str | None) -> list[tuple[str, Any]]:
    p = _profile(services, profile)
    out: list[tuple[str, Any]] = [("the live version", "live")]
    out += [(f"version {v.id} ({v.status})", v.id) for v in services.store.versions(p, "policy") if artifacts.available(v)]
    return out


# ----------------------------------------------------------------------------- tabs
def build_learning_tab(services: Services, ctx: Any = None) -> None:
    S = services
    with gr.Tab("Learning", id="learning", elem_id="tab-learning") as tab:
        profile_box = getattr(ctx, "profile", None)
        profile_in = [profile_box] if profile_box is not None else [gr.State(None)]
        with gr.Row():
            status = gr.Markdown("", elem_id="learner-status")
        progress = gr.Slider(0, 1, value=0, label="progress of the running phase", interactive=False,
                             elem_id="learner-progress")
        with gr.Row():
            pause = gr.Button("⏸ Pause", size="sm", elem_id="learner-pause")
            resume = gr.Button("▶ Resume", size="sm", elem_id="learner-resume")
            train_now = gr.Button("⚡ Train now", size="sm", variant="primary", elem_id="learner-train-now")
            refresh = gr.Button("↻ Refresh", size="sm", elem_id="learner-refresh")
        control_msg = gr.Markdown("", elem_classes=["small-note"])
        plots = []
        with gr.Row():
            for name, _kind, title in PLOTS[:2]:
                plots.append(gr.LinePlot(x="version", y="value", color="status", title=title, height=220,
                                         elem_id="plot-" + name.replace("/", "-")))
        with gr.Row():
            for name, _kind, title in PLOTS[2:]:
                plots.append(gr.LinePlot(x="version", y="value", color="status", title=title, height=220,
                                         elem_id="plot-" + name.replace("/", "-")))
        with gr.Row():
            fb_plot = gr.BarPlot(x="kind", y="count", title="Feedback by kind", height=220, elem_id="plot-feedback")
            with gr.Column():
                gr.Markdown("**Guard firings and learner events**")
                events = gr.Dataframe(headers=EVENT_COLUMNS, interactive=False, wrap=True, elem_id="learner-events")
        gr.Markdown("**Policy versions** (newest first; ● = live)")
        versions = gr.Dataframe(headers=VERSION_COLUMNS, interactive=False, elem_id="versions-table")
        with gr.Row():
            target = gr.Dropdown(choices=[], label="Roll back to", interactive=True, elem_id="rollback-target")
            rollback_btn = gr.Button("Roll back", variant="stop", size="sm", elem_id="rollback")
        rollback_msg = gr.Markdown("", elem_classes=["small-note"])
        with gr.Accordion("Evaluation report", open=True, elem_id="report-section"):
            with gr.Row():
                open_report = gr.Button("Open latest report", size="sm", elem_id="report-open")
            report_head = gr.Markdown("", elem_id="report-header")
            report_summary = gr.Markdown("", elem_id="report-summary")
            report_plots = gr.Gallery(label="Report plots", columns=2, height="auto", object_fit="contain",
                                      interactive=False, elem_id="report-plots")

    def fast(p):
        md, prog = learner_status(S, p)
        return md, prog

    def slow(p):
        frames = [metric_frame(S, p, name, kind) for name, kind, _ in PLOTS]
        return (*frames, feedback_frame(S, p), events_frame(S, p), versions_frame(S, p),
                gr.update(choices=rollback_choices(S, p)))

    slow_out = [*plots, fb_plot, events, versions, target]
    timer = gr.Timer(2.0)
    timer.tick(fast, inputs=profile_in, outputs=[status, progress], show_progress="hidden")
    slow_timer = gr.Timer(15.0)
    slow_timer.tick(slow, inputs=profile_in, outputs=slow_out, show_progress="hidden")
    refresh.click(slow, inputs=profile_in, outputs=slow_out).then(fast, inputs=profile_in, outputs=[status, progress])
    report_out = [report_head, report_summary, report_plots]
    open_report.click(lambda: open_latest_report(S), outputs=report_out)
    tab.select(lambda: open_latest_report(S), outputs=report_out, show_progress="hidden")
    if ctx is not None and getattr(ctx, "demo", None) is not None:
        ctx.demo.load(slow, inputs=profile_in, outputs=slow_out)
        ctx.demo.load(fast, inputs=profile_in, outputs=[status, progress])
        ctx.demo.load(lambda: open_latest_report(S), outputs=report_out)
    for btn, action in ((pause, "pause"), (resume, "resume"), (train_now, "train_now")):
        btn.click(lambda p, a=action: do_learner_command(S, p, a), inputs=profile_in, outputs=[control_msg]).then(
            fast, inputs=profile_in, outputs=[status, progress])
    rollback_btn.click(lambda p, t: do_rollback(S, p, t), inputs=[*profile_in, target], outputs=[rollback_msg]).then(
        slow, inputs=profile_in, outputs=slow_out)


def build_export_tab(services: Services, ctx: Any = None) -> None:
    S = services
    with gr.Tab("Export", id="export", elem_id="tab-export"):
        profile_box = getattr(ctx, "profile", None)
        profile_in = [profile_box] if profile_box is not None else [gr.State(None)]
        gr.Markdown(
            "Take what the assistant learned with you. **merged**: the LoRA merged into the base model, loadable with "
            "plain `transformers` (with a model card); **adapter**: the peft adapter and value head; **reward**: the "
            "reward model; **feedback**: your ratings as TRL-style JSONL datasets. Files are written to the data "
            "folder's `exports/` and offered here as a zip."
        )
        with gr.Row():
            what = gr.Radio(["merged", "adapter", "reward", "feedback"], value="adapter", label="What",
                            elem_id="export-what")
            version = gr.Dropdown(choices=[("the live version", "live")], value="live", label="Policy version",
                                  interactive=True, elem_id="export-version")
        go = gr.Button("Export", variant="primary", elem_id="export-go")
        msg = gr.Markdown("", elem_id="export-msg")
        file = gr.File(label="Download", interactive=False, elem_id="export-file")

    def run(p, w, v):
        text, path = do_export(S, p, w, v)
        return text, downloadable(path) if path else None

    go.click(run, inputs=[*profile_in, what, version], outputs=[msg, file])
    if ctx is not None and getattr(ctx, "demo", None) is not None:
        ctx.demo.load(lambda p: gr.update(choices=version_choices(S, p)), inputs=profile_in, outputs=[version])
    version.focus(lambda p: gr.update(choices=version_choices(S, p)), inputs=profile_in, outputs=[version])


TABS = (build_learning_tab, build_export_tab)
"""The tabs `inkloop serve` passes to build_ui."""
