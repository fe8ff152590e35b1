"""The UI's wiring, tested by calling its handler functions directly on a tiny model."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from assistant.app.services import SuggestRequest, validate_request
from assistant.app.ui import handlers as ui
from assistant.app.ui import writer
from assistant.lm.config import MAX_K

SAMPLING = dict(k=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7)


def _last(gen):
    """Run a streaming handler to the end; return (all yields, last yield)."""
    outs = list(gen)
    assert outs, "the handler yielded nothing"
    return outs, outs[-1]


def _split(out):
    """(rows, boxes, stars, msgs, cands, info, material) from one suggest yield."""
    n = MAX_K
    return out[:n], out[n:2 * n], out[2 * n:3 * n], out[3 * n:4 * n], out[4 * n], out[4 * n + 1], out[4 * n + 2]


def _suggest_continue(services, draft="The lighthouse keeper opened the door and", doc_id=None, **kw):
    s = {**SAMPLING, **kw}
    return _last(ui.suggest_continue(services, "default", draft, doc_id, s["k"], s["temperature"], s["top_p"],
                                     s["max_new_tokens"], s["seed"], s.get("variety", False)))


def test_build_ui_builds_with_fixed_candidate_rows(tiny_services):
    demo = writer.build_ui(tiny_services)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for i in range(MAX_K):
        for name in ("cand", "cand-text", "cand-up", "cand-down", "cand-best", "cand-stars", "cand-accept", "cand-edit"):
            assert f"{name}-{i}" in ids
    for name in ("draft", "suggest-continue", "suggest-restyle", "suggest-inspire", "undo", "profile", "k", "seed",
                 "variety"):
        assert name in ids
    kw = writer.launch_kwargs()
    assert kw["css_paths"] and kw["css_paths"][0].exists()


def test_extra_tabs_are_built_inside_the_main_tabs(tiny_services):
    seen = {}

    def learning_tab(services, ctx):
        with gr.Tab("Learning", elem_id="tab-learning"):
            seen["md"] = gr.Markdown("learning")
        seen["services"] = services

    def with_ctx(services, ctx):
        seen["ctx_profile"] = ctx.profile

    demo = writer.build_ui(tiny_services, tabs=[learning_tab, with_ctx])
    assert seen["services"] is tiny_services
    assert isinstance(seen["ctx_profile"], gr.Textbox) and seen["ctx_profile"].elem_id == "profile"
    tab = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "tab-learning")
    assert isinstance(tab.parent, gr.Tabs)


def test_suggest_streams_then_records_and_feedback_writes_rows(tiny_services):
    store = tiny_services.store
    outs, last = _suggest_continue(tiny_services)
    assert len(outs) >= 2  # at least one partial update before the recorded result
    rows, boxes, stars, msgs, cands, info, material = _split(last)
    assert cands["done"] and cands["mode"] == "continue" and cands["request_id"]
    n = len(cands["items"])
    assert 1 <= n <= 3
    assert [r["visible"] for r in rows] == [i < n for i in range(MAX_K)]
    assert [b["value"] for b in boxes[:n]] == [it["text"] for it in cands["items"]]
    assert "policy v0" in info and "tiny" in info
    # the partial yields carry a not-done state: rating then is refused
    _, _, _, _, partial_cands, partial_info, _ = _split(outs[0])
    assert not partial_cands["done"] and "generating" in partial_info
    with pytest.raises(gr.Error):
        ui.rate(tiny_services, partial_cands, 0, "thumb", 1)

    msg = ui.rate(tiny_services, cands, 0, "thumb", 1)
    fb = store.feedback()
    assert len(fb) == 1 and f"#{fb[0].id}" in msg
    assert (fb[0].kind, fb[0].value, fb[0].source, fb[0].suggestion_id) == ("thumb", 1.0, "ui", cands["items"][0]["id"])
    ui.rate(tiny_services, cands, 0, "stars", "4")
    ui.rate(tiny_services, cands, n - 1, "best")
    kinds = [(f.kind, f.value) for f in store.feedback()]
    assert kinds == [("thumb", 1.0), ("stars", 4.0), ("best", None)]
    # a slot without a suggestion is refused, nothing written
    with pytest.raises(gr.Error):
        ui.rate(tiny_services, cands, MAX_K - 1, "thumb", -1)
    assert len(store.feedback()) == 3


def test_parse_ranking_rules():
    assert ui.parse_ranking("2 1 3", 3) == [1, 0, 2]
    assert ui.parse_ranking(" 3, 1 ", 4) == [2, 0]
    assert ui.parse_ranking("4>2>1", 4) == [3, 1, 0]
    for bad, match in [("", "at least two"), ("2", "at least two"), ("2 x", "numbers only"),
                       ("1 5", "no suggestion 5"), ("0 1", "no suggestion 0"), ("1 2 1", "only once")]:
        with pytest.raises(gr.Error, match=match):
            ui.parse_ranking(bad, 4)


def test_varied_angles_checkbox_reaches_the_request(tiny_services):
    _, last = _suggest_continue(tiny_services, k=2, variety=True)
    items, info = _split(last)[4]["items"], _split(last)[5]
    assert "angles: 1 " in info  # which angle each numbered candidate was written from
    req = tiny_services.store.get_request(tiny_services.store.get_suggestion(items[0]["id"]).request_id)
    assert req.options["variety"] is True and len(req.options["angles"]) == 2


def test_ranking_from_the_ui_becomes_every_implied_pair(tiny_services):
    from reward.feedback import build_training_data

    store = tiny_services.store
    _, last = _suggest_continue(tiny_services, k=3)
    cands = _split(last)[4]
    items = cands["items"]
    assert len(items) == 3
    with pytest.raises(gr.Error, match="no suggestion 4"):
        ui.rank(tiny_services, cands, "4 1")
    assert store.feedback() == []  # bad input writes nothing
    msg = ui.rank(tiny_services, cands, "3 1 2")
    (fb,) = store.feedback()
    assert f"#{fb.id}" in msg and "3 > 1 > 2" in msg
    assert (fb.kind, fb.source, fb.ranking) == ("rank", "ui", [items[2]["id"], items[0]["id"], items[1]["id"]])
    data = build_training_data(store.requests_with_feedback())
    pairs = {(p.chosen, p.rejected) for p in data.pairs}
    t = [it["text"] for it in items]
    assert pairs == {(t[2], t[0]), (t[2], t[1]), (t[0], t[1])}


def test_bad_input_is_a_gradio_error_not_a_traceback(tiny_services):
    with pytest.raises(gr.Error, match="non-empty"):
        _suggest_continue(tiny_services, draft="   ")
    with pytest.raises(gr.Error, match="restyle needs"):
        list(ui.suggest_restyle(tiny_services, "default", "A passage.", ui.SAMPLE_STYLE, "", 2, 1.0, 0.9, 8, None))
    with pytest.raises(gr.Error, match="seed"):
        _suggest_continue(tiny_services, seed="abc")
    with pytest.raises(gr.Error, match="seed"):
        _suggest_continue(tiny_services, seed="inf")
    assert tiny_services.store.counts()["requests"] == 0


def test_accept_inserts_and_undo_restores_and_both_autosave(tiny_services):
    store = tiny_services.store
    draft = "It was late."
    doc_id, _ = ui.autosave_draft(tiny_services, "default", draft, None)
    _, last = _suggest_continue(tiny_services, draft=draft, doc_id=doc_id)
    cands = _split(last)[4]
    first = cands["items"][0]["text"]

    new, undo, doc_id2, msg = ui.accept(tiny_services, cands, 0, draft, [], doc_id, "default")
    assert new == ui.insert_into_draft(draft, first, "continue") and new.startswith(draft) and new.endswith(first)
    assert undo == [draft] and doc_id2 == doc_id
    assert store.get_document(doc_id)["text"] == new
    fb = store.feedback()[-1]
    assert (fb.kind, fb.value, fb.source) == ("accept", 1.0, "ui") and f"#{fb.id}" in msg

    # accept an edit: the edited text goes in, one `edit` row with that text
    edited = "The sea answered in a voice like gravel."
    new2, undo2, _, _ = ui.accept_edit(tiny_services, cands, 0, edited, new, undo, doc_id, "default")
    assert new2.endswith(edited) and undo2 == [draft, new]
    fb = store.feedback()[-1]
    assert (fb.kind, fb.edited_text) == ("edit", edited)
    with pytest.raises(gr.Error):  # an unchanged "edit" is refused
        ui.accept_edit(tiny_services, cands, 0, first, new2, undo2, doc_id, "default")

    back, undo3, _, _ = ui.undo_accept(tiny_services, new2, undo2, doc_id, "default")
    assert back == new and undo3 == [draft]
    back, undo4, _, _ = ui.undo_accept(tiny_services, back, undo3, doc_id, "default")
    assert back == draft and undo4 == []
    assert store.get_document(doc_id)["text"] == draft
    assert ui.undo_accept(tiny_services, back, undo4, doc_id, "default")[0] == draft  # nothing to undo


def test_draft_autosave_restores_on_load_per_profile(tiny_services):
    store = tiny_services.store
    assert ui.autosave_draft(tiny_services, "default", "", None) == (None, "")  # no empty documents
    doc_id, status = ui.autosave_draft(tiny_services, "default", "First words", None)
    assert doc_id and "saved" in status
    doc_id2, _ = ui.autosave_draft(tiny_services, "default", "First words, more words", doc_id)
    assert doc_id2 == doc_id and store.counts()["documents"] == 1
    ui.autosave_draft(tiny_services, "alice", "Alice's draft", None)

    profile, saved, draft, did, styles, header = ui.load_page(tiny_services, "default")
    assert (profile, saved, draft["value"], did) == ("default", "default", "First words, more words", doc_id)
    assert draft["interactive"] is True  # the box is read-only until the saved draft is in it
    assert "tiny" in header and "v0" in header
    assert ui.load_page(tiny_services, "alice")[2]["value"] == "Alice's draft"
    assert ui.load_page(tiny_services, "nobody")[2]["value"] == "" and ui.load_page(tiny_services, "nobody")[3] is None
    # switching profile loads that profile's draft; "switching" to the same one changes nothing
    assert ui.switch_profile(tiny_services, "alice", "default")[2]["value"] == "Alice's draft"
    assert ui.switch_profile(tiny_services, " default ", "default") == tuple(gr.skip() for _ in range(6))
    # a document id from another profile is not overwritten: a new document is made
    bob_id, _ = ui.autosave_draft(tiny_services, "bob", "Bob writes", doc_id)
    assert bob_id != doc_id and store.get_document(doc_id)["text"] == "First words, more words"


def test_restyle_inspire_styles_and_library(tiny_services):
    store = tiny_services.store
    choice, msg = ui.save_style(tiny_services, "default", "noir", "hard-boiled, short sentences")
    assert ("noir (yours)", "noir") in choice["choices"] and choice["value"] == "noir" and "noir" in msg
    for reserved in ("formal", " poetic ", "imitate"):
        with pytest.raises(gr.Error, match="built-in"):
            ui.save_style(tiny_services, "default", reserved, "clash with a built-in")
    assert set(store.styles("default")) == {"noir"}
    _, last = _last(ui.suggest_restyle(tiny_services, "default", "The rain fell on the city.", "noir", "",
                                       2, 1.0, 0.95, 10, 3))
    cands = _split(last)[4]
    assert cands["mode"] == "restyle" and cands["done"]
    assert store.get_request(cands["request_id"]).options["style"] == "noir"

    msg, cleared = ui.add_snippet(tiny_services, "default", "Lighthouses guide ships through fog at night.")
    assert "snippet #" in msg and cleared == ""
    ui.add_snippet(tiny_services, "default", "A recipe for lemon cake with poppy seeds.")
    assert "Lighthouses" in ui.find_material(tiny_services, "default", "lighthouse, fog", "").split("\n")[0]
    assert "snippet #" in ui.save_draft_to_library(tiny_services, "default", "One. Two three.", "Two three.")
    assert store.snippets("default")[-1].text == "Two three." and store.snippets("default")[-1].source == "selection"

    _, last = _last(ui.suggest_inspire(tiny_services, "default", "lighthouse, fog", "", "ideas", 2, 1.0, 0.95, 10, 5))
    material = _split(last)[6]
    assert "Lighthouses" in material.split("\n")[0]


def test_insert_into_draft_rules():
    assert ui.insert_into_draft("", "Hello.", "continue") == "Hello."
    assert ui.insert_into_draft("It was late.", "She slept.", "continue") == "It was late. She slept."
    assert ui.insert_into_draft("It was late\n", "She slept.", "continue") == "It was late\nShe slept."
    assert ui.insert_into_draft("Wait", ", she said.", "continue") == "Wait, she said."
    assert ui.insert_into_draft("A. B c. D.", "Bee see.", "restyle", "B c.") == "A. Bee see. D."
    assert ui.insert_into_draft("A.", "New.", "restyle", "not there") == "A.\n\nNew."
    assert ui.insert_into_draft("A.", "Idea.", "inspire") == "A.\n\nIdea."
    assert ui.last_paragraph("One.\n\nTwo\nlines.\n\n  ") == "Two\nlines."


def test_prompts_asset_is_valid_and_split():
    doc = writer.load_json_asset("prompts.json", None)
    prompts = doc["prompts"]
    assert len(prompts) >= 36 and len({p["id"] for p in prompts}) == len(prompts)
    for mode in ("continue", "restyle", "inspire"):
        splits = {p["split"] for p in prompts if p["mode"] == mode}
        assert splits == {"train", "heldout"}, mode
    for p in prompts:
        fields = {k: v for k, v in p.items() if k not in ("id", "split", "sample_name")}
        validate_request(SuggestRequest(**fields))
    examples = json.loads((writer.ASSETS / "examples.json").read_text())
    for e in examples["restyle"]:
        validate_request(SuggestRequest(mode="restyle", text=e["text"], style=e["style"]))
