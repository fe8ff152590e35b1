"""Report folders for evaluations, reward-function comparisons and sweeps.

A report lives in ``<data_dir>/reports/<YYYYmmdd-HHMMSS>-<kind>/``:

    summary.md      title, settings, the results table (one row per run), the best run, notes
    results.json    the raw results (every metric and curve), for tools and later plots
    *.png           plots (matplotlib, Agg backend): learning curves, win-rate against KL,
                    diversity against reward

The folder is written under a temporary name and renamed into place, so `latest_report` never
sees a half-written report. A *run* is a dict::

    {"name": str, "config": {...}, "metrics": {"eval/win_rate": ..., ...},
     "curves": {"step": [...], "<metric>": [...], ...}}
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from storage.artifacts import write_atomic_dir

REPORTS_DIR = "reports"

# Columns of the results table: (metric key, header, format)
DEFAULT_COLUMNS: list[tuple[str, str, str]] = [
    ("eval/win_rate", "win-rate", "{:.2f}"),
    ("eval/win_ci", "95% CI", "{}"),
    ("eval/kl", "KL", "{:.4f}"),
    ("eval/reward", "reward", "{:.3f}"),
    ("eval/rm_score", "RM score", "{:.3f}"),
    ("eval/distinct_2", "distinct-2", "{:.3f}"),
    ("eval/self_bleu", "self-BLEU", "{:.3f}"),
    ("eval/repetition", "repetition", "{:.3f}"),
    ("eval/length_words", "length (words)", "{:.1f}"),
    ("eval/perplexity", "ref. PPL", "{:.1f}"),
    ("eval/seconds", "seconds", "{:.0f}"),
]


CURVES: list[tuple[str, str, str]] = [
    ("reward", "mean reward", "step"),
    ("win_rate", "win-rate vs base", "step"),
    ("kl", "KL to base", "step"),
    ("rl/reward", "RL reward (the run's own reward function)", "RL step"),
    ("rl/kl", "RL KL to the reference (per sequence)", "RL step"),
    ("sim/stars", "simulated rater's mean stars", "ratings given"),
    ("rm/accuracy", "reward-model held-out accuracy", "ratings given"),
]
"""Learning curves drawn when present: (curve name, y label, x label)."""


def reports_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / REPORTS_DIR


# ----------------------------------------------------------------------------- table
def _fmt(v: Any, fmt: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _config_str(cfg: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.items()) if cfg else ""


def results_table(runs: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] | None = None) -> str:
    """A Markdown table: run name, its config, then every column some run has a value for."""
    columns = list(columns or DEFAULT_COLUMNS)
    present = [c for c in columns if any(c[0] in r.get("metrics", {}) for r in runs)]
    head = ["run", "setting"] + [h for _, h, _ in present]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m = r.get("metrics", {})
        cells = [str(r.get("name", "")), _config_str(r.get("config", {}))]
        cells += [_fmt(m.get(k), f) for k, _, f in present]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _num(m: dict[str, Any], key: str | None) -> float:
    v = m.get(key) if key else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def best_run(runs: Sequence[dict[str, Any]], key: str = "eval/win_rate", higher: bool = True,
             tiebreak: str | None = None) -> dict[str, Any] | None:
    """The run with the best finite value of `key` (None if no run has one); equal values are
    decided by the higher `tiebreak` metric, then by order."""
    scored = [r for r in runs if _num(r.get("metrics", {}), key) > -math.inf]
    if not scored:
        return None
    sign = 1.0 if higher else -1.0
    return max(scored, key=lambda r: (sign * _num(r["metrics"], key), _num(r["metrics"], tiebreak)))


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def curve_xy(curves: dict[str, Any], metric: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of one curve: either a list of [x, y] pairs, or a list of values plotted against
    curves["step"] (or 1, 2, 3, ...). Non-finite points are dropped."""
    vals = curves.get(metric) or []
    if vals and isinstance(vals[0], (list, tuple)):
        pts = [(float(x), float(y)) for x, y in vals]
    else:
        xs = curves.get("step") or list(range(1, len(vals) + 1))
        pts = [(float(x), float(y)) for x, y in zip(xs, vals)]
    pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    return [x for x, _ in pts], [y for _, y in pts]


def plot_curves(runs: Sequence[dict[str, Any]], metric: str, path: Path, ylabel: str | None = None,
                xlabel: str = "step") -> Path | None:
    """One line per run of one curve (see curve_xy); None when no run has the curve."""
    have = [r for r in runs if curve_xy(r.get("curves", {}), metric)[0]]
    if not have:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for r in have:
        xs, ys = curve_xy(r["curves"], metric)
        ax.plot(xs, ys, marker="o", markersize=3, label=str(r.get("name")))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or metric)
    ax.set_title(f"{ylabel or metric} during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_scatter(runs: Sequence[dict[str, Any]], x: str, y: str, path: Path, xlabel: str, ylabel: str,
                 title: str, yerr: tuple[str, str] | None = None) -> Path | None:
    """One labelled point per run at (metrics[x], metrics[y]); optional asymmetric error bars from
    metrics[yerr[0]] (low) and metrics[yerr[1]] (high). None when no run has both values."""
    pts = []
    for r in runs:
        m = r.get("metrics", {})
        if isinstance(m.get(x), (int, float)) and isinstance(m.get(y), (int, float)):
            if math.isfinite(m[x]) and math.isfinite(m[y]):
                pts.append(r)
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for r in pts:
        m = r["metrics"]
        if yerr and yerr[0] in m and yerr[1] in m:
            err = [[max(0.0, m[y] - m[yerr[0]])], [max(0.0, m[yerr[1]] - m[y])]]
            ax.errorbar([m[x]], [m[y]], yerr=err, fmt="o", capsize=3)
        else:
            ax.plot([m[x]], [m[y]], "o")
        ax.annotate(str(r.get("name")), (m[x], m[y]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def standard_plots(runs: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """Learning curves (reward, win-rate, KL), win-rate against KL, diversity against reward."""
    out = []
    for metric, label, xlabel in CURVES:
        fname = "curve_" + metric.replace("/", "_") + ".png"
        p = plot_curves(runs, metric, folder / fname, label, xlabel)
        if p:
            out.append(p)
    p = plot_scatter(runs, "eval/kl", "eval/win_rate", folder / "winrate_vs_kl.png", "KL to base (per token)",
                     "win-rate vs base", "win-rate against KL", yerr=("eval/win_ci_low", "eval/win_ci_high"))
    if p:
        out.append(p)
    p = plot_scatter(runs, "eval/reward", "eval/distinct_2", folder / "diversity_vs_reward.png",
                     "mean reward (the run's own reward function)", "distinct-2", "diversity against reward")
    if p:
        out.append(p)
    return out


# ----------------------------------------------------------------------------- folder
def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item"):
        return _jsonable(x.item())
    return str(x)


def write_report(
    data_dir: str | Path,
    kind: str,
    runs: Sequence[dict[str, Any]],
    *,
    title: str,
    settings: dict[str, Any] | None = None,
    best_key: str = "eval/win_rate",
    tiebreak: str | None = None,
    notes: Sequence[str] = (),
    columns: Sequence[tuple[str, str, str]] | None = None,
) -> Path:
    """Write summary.md, results.json and the plots into a new report folder; return its path."""
    root = reports_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = root / f"{stamp}-{kind}"
    if final.exists():
        final = root / f"{stamp}-{kind}-{uuid.uuid4().hex[:4]}"

    def write(tmp: Path) -> None:
        plots = standard_plots(runs, tmp)
        best = best_run(runs, best_key, tiebreak=tiebreak)
        md = [f"# {title}", "", f"*{time.strftime('%Y-%m-%d %H:%M:%S')} — kind: {kind}*", ""]
        if settings:
            md += ["## Settings", ""] + [f"- **{k}**: {v}" for k, v in settings.items()] + [""]
        md += ["## Results", "", results_table(runs, columns), ""]
        if best is not None:
            md += [f"**Best by {best_key}:** {best['name']} ({_config_str(best.get('config', {}))}) — "
                   f"{best_key} = {best['metrics'][best_key]:.3f}", ""]
        if notes:
            md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        if plots:
            md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
        (tmp / "summary.md").write_text("\n".join(md))
        raw = {"kind": kind, "title": title, "settings": settings or {}, "best": best["name"] if best else None,
               "best_key": best_key, "runs": list(runs), "plots": [p.name for p in plots]}
        (tmp / "results.json").write_text(json.dumps(_jsonable(raw), indent=2))

    return write_atomic_dir(final, write)  # a reader never sees half a report


def latest_report(data_dir: str | Path) -> dict[str, Any] | None:
    """The newest complete report folder under data_dir/reports, or None.

    Returns {"path", "name", "kind", "summary_path", "summary" (Markdown text), "plots" (PNG paths,
    sorted), "results_path"}. For the learning tab: show `summary` and the images in `plots`."""
    root = reports_root(data_dir)
    if not root.is_dir():
        return None
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and (p / "summary.md").is_file()), key=lambda p: p.name)
    if not folders:
        return None
    f = folders[-1]
    kind = f.name.split("-", 2)[2] if f.name.count("-") >= 2 else ""
    return {
        "path": str(f),
        "name": f.name,
        "kind": kind,
        "summary_path": str(f / "summary.md"),
        "summary": (f / "summary.md").read_text(),
        "plots": [str(p) for p in sorted(f.glob("*.png"))],
        "results_path": str(f / "results.json") if (f / "results.json").is_file() else None,
    }
