"""The Learning tab's "Evaluation report" section: the latest report's summary and plots."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import gradio as gr
from gradio.utils import is_allowed_file

from assistant.app.ui import learning as L
from reward.eval import report as R

RUNS = [
    {"name": "a", "config": {"lr": 1e-5}, "metrics": {"eval/win_rate": 0.4, "eval/kl": 0.01, "eval/reward": 0.1,
                                                     "eval/distinct_2": 0.8},
     "curves": {"step": [1, 2, 3], "reward": [0.0, 0.1, 0.2], "kl": [0.0, 0.01, 0.02]}},
    {"name": "b", "config": {"lr": 1e-4}, "metrics": {"eval/win_rate": 0.7, "eval/kl": 0.05, "eval/reward": 0.3,
                                                     "eval/distinct_2": 0.6},
     "curves": {"step": [1, 2], "reward": [0.0, 0.3]}},
]


def test_no_report_says_how_to_make_one(tmp_path):
    head, summary, plots = L.report_view(tmp_path)
    assert "No evaluation report yet" in head and str(tmp_path / "reports") in head
    assert "inkloop eval compare-rewards --rater concise --budget 24" in head and "inkloop eval sweep" in head
    assert summary == "" and plots == []
    (tmp_path / "reports" / ".tmp-half-written").mkdir(parents=True)  # an unfinished write is not a report
    assert "No evaluation report yet" in L.report_view(tmp_path)[0]


def test_latest_report_summary_and_plots_are_served(tmp_path, monkeypatch):
    data, served_root = tmp_path / "data", tmp_path / "gradio-tmp"
    served_root.mkdir()
    # make the system temp dir one that does NOT hold the data dir, as with the real ~/.inkloop
    monkeypatch.setattr(tempfile, "tempdir", str(served_root))
    R.write_report(data, "sweep", RUNS[:1], title="Old")
    os.rename(*sorted((data / "reports").iterdir()), data / "reports" / "20000101-000000-sweep")
    folder = R.write_report(data, "compare-rewards", RUNS, title="Reward designs", notes=["a note"])

    head, summary, gallery = L.report_view(data)
    assert folder.name in head and "compare-rewards" in head
    assert summary.startswith("# Reward designs") and "## Results" in summary and "| b | lr=0.0001 | 0.70 |" in summary
    assert "**Best by eval/win_rate:** b" in summary and "a note" in summary
    assert "## Plots" not in summary and "](" not in summary  # relative image links removed; the gallery has them
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) >= 4 and [Path(p).name for p, _ in gallery] == [p.name for p in pngs]
    assert [c for _, c in gallery] == [p.stem for p in pngs]
    for (p, _), src in zip(gallery, pngs):
        p = Path(p)
        assert p.read_bytes() == src.read_bytes() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # what a launched Gradio app accepts with no allowed_paths: the working dir and the temp dir
        ok = [os.getcwd(), tempfile.gettempdir()]
        assert is_allowed_file(p.resolve(), [], ok, [])[0]
        assert not is_allowed_file(src.resolve(), [], ok, [])[0]
    # opening again reuses the same served files
    assert L.report_view(data)[2] == gallery


def test_open_latest_report_uses_the_services_data_dir_and_tab_has_the_section(tiny_services):
    data_dir = tiny_services.store.path.parent
    assert "No evaluation report yet" in L.open_latest_report(tiny_services)[0]
    folder = R.write_report(data_dir, "sweep", RUNS, title="Sweep")
    head, summary, gallery = L.open_latest_report(tiny_services)
    assert folder.name in head and summary.startswith("# Sweep") and len(gallery) == len(list(folder.glob("*.png")))

    from assistant.app.ui.writer import build_ui

    blocks = build_ui(tiny_services, L.TABS).blocks.values()
    ids = {getattr(b, "elem_id", None) for b in blocks}
    assert {"report-open", "report-header", "report-summary", "report-plots"} <= ids
    assert any(isinstance(b, gr.Gallery) and b.elem_id == "report-plots" for b in blocks)
