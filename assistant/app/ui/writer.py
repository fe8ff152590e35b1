"""The Gradio UI: `build_ui(services) -> gr.Blocks`. Wiring only: no torch, no SQL.

Layout (layout first, wiring below it):

- a header with the model name and the live policy version (refreshed by a timer);
- a main column with three tabs (Continue, Restyle, Inspire) and, under the tabs, one shared
  "Suggestions" panel of ``MAX_K`` pre-built candidate rows that are shown or hidden by how many
  candidates the last request produced; every row has an editable text box and 👍 / 👎, 1-5 stars,
  "Best of these", "Accept" and "Accept my edit" controls, each of which is one
  ``services.feedback(..., source="ui")`` call;
- a side column with the sampling controls (K, temperature, top-p, max new tokens, seed) and the
  profile name (kept in the browser's localStorage, so a reload keeps it).

State that must survive a page reload lives in the store: the draft is autosaved as a document of
the profile and restored on page load. The undo stack of accepts lives in the session.

Every handler is a plain module-level function whose first argument is the `Services`; build_ui
binds them to components. Tests call them directly.

Styling: Gradio 6 takes css/theme at launch (or mount) time, not in ``gr.Blocks``. Use
``launch_kwargs()`` (``demo.launch(**launch_kwargs())``) or ``mount_ui(app, services)``, which calls
``gr.mount_gradio_app(app, build_ui(services), path, **launch_kwargs())``.

Extra tabs are passed in: ``build_ui(services, tabs)`` calls each ``tab(services, ctx)`` inside the
main ``gr.Tabs()`` after the built-in ones (``ctx``: a `UIContext` with the profile box, header and
Blocks). The composition root (assistant.app.cli.serve) passes the Learning and Export tabs of
assistant.app.ui.learning. The handlers live in assistant.app.ui.handlers."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gradio as gr

from assistant.app.services import Services
from assistant.app.ui.handlers import (
    SAMPLE_STYLE,
    _empty_cands,
    accept,
    accept_edit,
    add_snippet,
    autosave_draft,
    find_material,
    header_text,
    last_paragraph,
    load_page,
    pick_sample,
    rank,
    rate,
    remember_selection,
    save_draft_to_library,
    save_style,
    style_choices,
    suggest_continue,
    suggest_inspire,
    suggest_restyle,
    switch_profile,
    undo_accept,
)
from assistant.lm.config import (
    ASSETS,
    INSPIRE_KINDS,
    MAX_DRAW,
    MAX_K,
    MAX_NEW_TOKENS,
)

log = logging.getLogger(__name__)

CSS_PATH = ASSETS / "style.css"

STARS = ["1", "2", "3", "4", "5"]

# ============================================================================= assets
def load_json_asset(name: str, default: Any) -> Any:
    """Read assets/<name> (a JSON file); the default if it is missing or unreadable."""
    try:
        return json.loads((ASSETS / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("asset %s missing or unreadable", name)
        return default

def launch_kwargs() -> dict[str, Any]:
    """css/theme for ``Blocks.launch`` or ``gr.mount_gradio_app`` (Gradio 6 takes them there)."""
    kw: dict[str, Any] = {"theme": gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")}
    if CSS_PATH.exists():
        kw["css_paths"] = [CSS_PATH]
    return kw

def mount_ui(app, services: Services, path: str = "/", tabs: Sequence[Tab] = ()):
    """Mount the UI (with the extra `tabs`) on a FastAPI app at `path` with the project's css and theme."""
    return gr.mount_gradio_app(app, build_ui(services, tabs), path=path, **launch_kwargs())

# ============================================================================= layout + wiring
@dataclass
class UIContext:
    """The shared components an extra tab may read or refresh."""

    profile: gr.Textbox
    header: gr.Markdown
    demo: gr.Blocks

Tab = Callable[[Services, UIContext], None]
"""An extra tab: called inside the main gr.Tabs() after the built-in tabs, it opens its own gr.Tab."""


def build_ui(services: Services, tabs: Sequence[Tab] = ()) -> gr.Blocks:
    """The writing UI; `tabs` are built after Continue / Restyle / Inspire (the composition root
    passes the Learning and Export tabs)."""
    examples = load_json_asset("examples.json", {"continue": [], "restyle": [], "inspire": []})
    samples: dict[str, str] = load_json_asset("style_samples.json", {})
    g = services.generation_defaults

    with gr.Blocks(title="inkloop: a writing assistant that learns from you") as demo:
        # ----------------------------------------------------------------- state
        profile_saved = gr.BrowserState(services.default_profile, storage_key="inkloop-profile")
        doc_id = gr.State(None)
        undo = gr.State([])
        cands = gr.State(_empty_cands())
        selection = gr.State("")

        # ----------------------------------------------------------------- layout
        with gr.Row(elem_id="topbar"):
            gr.Markdown("## ✒️ inkloop", elem_id="title")
            header = gr.Markdown(header_text(services), elem_id="header-info")

        with gr.Row(equal_height=False):
            with gr.Column(scale=3, elem_id="main-col"):
                with gr.Tabs(elem_id="modes") as main_tabs:
                    with gr.Tab("Continue", id="continue", elem_id="tab-continue"):
                        draft = gr.Textbox(
                            label="Your draft (saved automatically)", lines=12, max_lines=30, interactive=False,
                            placeholder="Loading your draft…", elem_id="draft",
                        )
                        with gr.Row():
                            suggest_c = gr.Button("✨ Suggest continuations", variant="primary", elem_id="suggest-continue")
                            save_sel = gr.Button("Save selection/draft to library", elem_id="save-selection")
                        draft_status = gr.Markdown("", elem_id="draft-status", elem_classes=["small-note"])
                        if examples.get("continue"):
                            with gr.Accordion("Example drafts", open=False):
                                gr.Examples(examples=[[e] for e in examples["continue"]], inputs=[draft], label=None)

                    with gr.Tab("Restyle", id="restyle", elem_id="tab-restyle"):
                        passage = gr.Textbox(label="Passage to rewrite", lines=6, elem_id="passage")
                        take_para = gr.Button("Take the draft's last paragraph", size="sm", elem_id="take-paragraph")
                        style = gr.Dropdown(
                            choices=style_choices(services, services.default_profile), value="formal",
                            label="Target style", elem_id="style",
                        )
                        with gr.Group(visible=False, elem_id="sample-group") as sample_group:
                            sample_pick = gr.Dropdown(choices=list(samples), value=None, label="Pick a sample voice",
                                                      elem_id="sample-pick")
                            sample = gr.Textbox(label="Sample to imitate", lines=4, elem_id="sample")
                        suggest_r = gr.Button("✨ Suggest rewrites", variant="primary", elem_id="suggest-restyle")
                        with gr.Accordion("Define your own style", open=False, elem_id="style-form"):
                            style_name = gr.Textbox(label="Name", placeholder="e.g. noir", elem_id="style-name")
                            style_desc = gr.Textbox(
                                label="Description", lines=2, elem_id="style-desc",
                                placeholder="e.g. hard-boiled, short sentences, world-weary first person",
                            )
                            save_style_btn = gr.Button("Save style", size="sm", elem_id="save-style")
                            style_msg = gr.Markdown("", elem_classes=["small-note"])
                        if examples.get("restyle"):
                            with gr.Accordion("Examples", open=False):
                                gr.Examples(examples=[[e["text"], e["style"]] for e in examples["restyle"]],
                                            inputs=[passage, style], label=None)

                    with gr.Tab("Inspire", id="inspire", elem_id="tab-inspire"):
                        with gr.Row():
                            keywords = gr.Textbox(label="Keywords (comma-separated)", elem_id="keywords", scale=2)
                            theme = gr.Textbox(label="…or a theme", elem_id="theme", scale=2)
                        kind = gr.Radio(list(INSPIRE_KINDS), value="ideas", label="Kind", elem_id="inspire-kind")
                        with gr.Row():
                            suggest_i = gr.Button("✨ Inspire me", variant="primary", elem_id="suggest-inspire")
                            find_btn = gr.Button("Find material only", elem_id="find-material")
                        with gr.Group(elem_id="material-box"):
                            gr.Markdown("**Material from your library**")
                            material = gr.Markdown("_Ask for inspiration to see matching snippets._", elem_id="material")
                        with gr.Accordion("Add to your library", open=False, elem_id="library-form"):
                            snippet = gr.Textbox(label="Paste a note, quote or passage", lines=3, elem_id="snippet")
                            add_snip = gr.Button("Add to library", size="sm", elem_id="add-snippet")
                        library_msg = gr.Markdown("", elem_classes=["small-note"], elem_id="library-msg")
                        if examples.get("inspire"):
                            with gr.Accordion("Examples", open=False):
                                gr.Examples(examples=[[e["keywords"], e.get("theme", ""), e["kind"]]
                                                      for e in examples["inspire"]],
                                            inputs=[keywords, theme, kind], label=None)


                # the shared suggestions panel
                with gr.Group(elem_id="suggestions"):
                    with gr.Row(elem_id="suggest-bar"):
                        info = gr.Markdown("_Suggestions appear here._", elem_id="suggest-info")
                        undo_btn = gr.Button("↶ Undo last accept", size="sm", scale=0, elem_id="undo")
                    undo_msg = gr.Markdown("", elem_classes=["small-note"], elem_id="undo-msg")
                    rows, boxes, stars, msgs, buttons = [], [], [], [], []
                    for i in range(MAX_K):
                        with gr.Row(visible=False, elem_id=f"cand-{i}", elem_classes=["cand-row"]) as row:
                            with gr.Column(scale=4, min_width=300):
                                box = gr.Textbox(
                                    label=f"#{i + 1}", show_label=True, lines=3, max_lines=12, interactive=True,
                                    elem_id=f"cand-text-{i}", elem_classes=["cand-text"],
                                )
                                msg = gr.Markdown("", elem_id=f"cand-msg-{i}", elem_classes=["small-note", "cand-msg"])
                            with gr.Column(scale=2, min_width=220, elem_classes=["cand-actions"]):
                                with gr.Row(elem_classes=["cand-btns"]):
                                    up = gr.Button("👍 Good", size="sm", min_width=40, elem_id=f"cand-up-{i}")
                                    down = gr.Button("👎 Bad", size="sm", min_width=40, elem_id=f"cand-down-{i}")
                                    best = gr.Button("🏆 Best", size="sm", min_width=60, elem_id=f"cand-best-{i}")
                                star = gr.Radio(STARS, value=None, label="stars", show_label=False,
                                                elem_id=f"cand-stars-{i}", elem_classes=["cand-stars"])
                                with gr.Row(elem_classes=["cand-btns"]):
                                    acc = gr.Button("Accept", size="sm", variant="primary", elem_id=f"cand-accept-{i}")
                                    acc_edit = gr.Button("Accept my edit", size="sm", elem_id=f"cand-edit-{i}")
                        rows.append(row)
                        boxes.append(box)
                        stars.append(star)
                        msgs.append(msg)
                        buttons.append((up, down, best, acc, acc_edit))
                    with gr.Row(elem_id="rank-bar"):
                        rank_text = gr.Textbox(label="Rank them (numbers, best first)", placeholder="e.g. 2 1 3",
                                               max_lines=1, scale=3, elem_id="rank-text")
                        rank_btn = gr.Button("Save ranking", size="sm", scale=1, elem_id="rank-save")
                    rank_msg = gr.Markdown("", elem_classes=["small-note"], elem_id="rank-msg")

            with gr.Column(scale=1, min_width=260, elem_id="side-col"):
                with gr.Accordion("Sampling", open=True, elem_id="sampling"):
                    k = gr.Slider(1, MAX_K, value=max(1, min(MAX_K, g.k)), step=1, label="K candidates", elem_id="k")
                    temperature = gr.Slider(0.0, 2.0, value=g.temperature, step=0.05, label="Temperature",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=g.top_p, step=0.01, label="Top-p", elem_id="top-p")
                    max_new = gr.Slider(8, MAX_NEW_TOKENS, value=g.max_new_tokens, step=8, label="Max new tokens",
                                        elem_id="max-new-tokens")
                    seed = gr.Textbox(value="" if g.seed is None else str(g.seed), label="Seed (blank = random)",
                                      max_lines=1, elem_id="seed")
                    variety = gr.Checkbox(value=g.variety, label="Varied angles", elem_id="variety",
                                          info="Continue/inspire: candidates from different angles "
                                               "(detail, brevity, tone, surprise).")
                    choice_on = gr.Checkbox(value=services.choice.enabled, label="Reward-guided choice",
                                            elem_id="choice",
                                            info="Once you have rated enough for a reward model: draw N candidates "
                                                 "and show the best K by it, one slot kept for exploration.")
                    draw = gr.Slider(1, MAX_DRAW, value=services.choice.draw, step=1, label="Draw N candidates",
                                     elem_id="draw")
                profile = gr.Textbox(value=services.default_profile, label="Profile", max_lines=1,
                                     info="Each profile has its own drafts, ratings and learned policy.",
                                     elem_id="profile")
                gr.Markdown(
                    "Rate suggestions with 👍/👎, stars, 🏆 or a ranking; **Accept** puts one into your draft. "
                    "Every rating teaches the assistant your taste.",
                    elem_classes=["small-note"],
                )

        # extra tabs are built inside the main Tabs, once the profile box they read exists
        ctx = UIContext(profile=profile, header=header, demo=demo)
        with main_tabs:
            for build_tab in tabs:
                build_tab(services, ctx)

        timer = gr.Timer(15.0)

        # ----------------------------------------------------------------- wiring
        S = services
        load_outputs = [profile, profile_saved, draft, doc_id, style, header]
        demo.load(lambda p: load_page(S, p), inputs=[profile_saved], outputs=load_outputs)
        profile.submit(lambda p, cur: switch_profile(S, p, cur), inputs=[profile, profile_saved], outputs=load_outputs)
        profile.blur(lambda p, cur: switch_profile(S, p, cur), inputs=[profile, profile_saved], outputs=load_outputs)
        timer.tick(lambda p: header_text(S, p), inputs=[profile], outputs=[header], show_progress="hidden")

        draft.change(lambda p, d, i: autosave_draft(S, p, d, i), inputs=[profile, draft, doc_id],
                     outputs=[doc_id, draft_status], trigger_mode="always_last", show_progress="hidden")
        draft.select(remember_selection, inputs=None, outputs=[selection], show_progress="hidden")
        save_sel.click(lambda p, d, s: save_draft_to_library(S, p, d, s), inputs=[profile, draft, selection],
                       outputs=[draft_status])

        sampling = [k, temperature, top_p, max_new, seed, variety, draw, choice_on]
        suggest_outputs = [*rows, *boxes, *stars, *msgs, cands, info, material]
        common = dict(outputs=suggest_outputs, show_progress="minimal", show_progress_on=[info],
                      concurrency_id="generate")

        def _continue(p, d, i, *s):
            yield from suggest_continue(S, p, d, i, *s)

        def _restyle(p, pa, st, sa, *s):
            yield from suggest_restyle(S, p, pa, st, sa, *s)

        def _inspire(p, kw, th, kd, *s):
            yield from suggest_inspire(S, p, kw, th, kd, *s)

        refresh = dict(fn=lambda p: header_text(S, p), inputs=[profile], outputs=[header], show_progress="hidden")
        suggest_c.click(_continue, inputs=[profile, draft, doc_id, *sampling], **common).then(**refresh)
        suggest_r.click(_restyle, inputs=[profile, passage, style, sample, *sampling], **common).then(**refresh)
        suggest_i.click(_inspire, inputs=[profile, keywords, theme, kind, *sampling], **common).then(**refresh)

        take_para.click(last_paragraph, inputs=[draft], outputs=[passage])
        style.change(lambda s: gr.update(visible=s == SAMPLE_STYLE), inputs=[style], outputs=[sample_group],
                     show_progress="hidden")
        sample_pick.change(lambda key: pick_sample(samples, key), inputs=[sample_pick], outputs=[sample],
                           show_progress="hidden")
        save_style_btn.click(lambda p, n, d: save_style(S, p, n, d), inputs=[profile, style_name, style_desc],
                             outputs=[style, style_msg])

        find_btn.click(lambda p, kw, th: find_material(S, p, kw, th), inputs=[profile, keywords, theme],
                       outputs=[material])
        add_snip.click(lambda p, t: add_snippet(S, p, t), inputs=[profile, snippet], outputs=[library_msg, snippet])

        draft_io = dict(outputs=[draft, undo, doc_id, undo_msg])
        undo_btn.click(lambda d, u, i, p: undo_accept(S, d, u, i, p), inputs=[draft, undo, doc_id, profile], **draft_io)
        rank_io = dict(fn=lambda c, t: rank(S, c, t), inputs=[cands, rank_text], outputs=[rank_msg])
        rank_btn.click(**rank_io)
        rank_text.submit(**rank_io)
        for btn in (suggest_c, suggest_r, suggest_i):  # a new request starts a new ranking
            btn.click(lambda: ("", ""), outputs=[rank_text, rank_msg], show_progress="hidden")
        for i in range(MAX_K):
            up, down, best, acc, acc_edit = buttons[i]
            up.click(lambda c, i=i: rate(S, c, i, "thumb", 1), inputs=[cands], outputs=[msgs[i]])
            down.click(lambda c, i=i: rate(S, c, i, "thumb", -1), inputs=[cands], outputs=[msgs[i]])
            best.click(lambda c, i=i: rate(S, c, i, "best"), inputs=[cands], outputs=[msgs[i]])
            stars[i].input(lambda c, v, i=i: rate(S, c, i, "stars", v), inputs=[cands, stars[i]], outputs=[msgs[i]])
            acc.click(lambda c, d, u, di, p, i=i: accept(S, c, i, d, u, di, p),
                      inputs=[cands, draft, undo, doc_id, profile], outputs=[draft, undo, doc_id, msgs[i]])
            acc_edit.click(lambda c, e, d, u, di, p, i=i: accept_edit(S, c, i, e, d, u, di, p),
                           inputs=[cands, boxes[i], draft, undo, doc_id, profile],
                           outputs=[draft, undo, doc_id, msgs[i]])
    return demo
