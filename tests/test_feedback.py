"""Feedback -> preference pairs and pointwise targets, worked out by hand for each kind."""

from __future__ import annotations

import pytest

from reward.feedback import (
    PreferencePair,
    build_training_data,
    context_of,
    pairs_from_ranking,
    stars_to_target,
)
from storage.records import Feedback, Request, Suggestion


def _req(texts=("A", "B", "C"), rid=1, mode="continue", text="Once upon a time", options=None):
    r = Request(rid, "default", mode, text, options or {}, "prompt", 0, None, 0.0)
    r.suggestions = [Suggestion(10 * rid + i, rid, i, t, 0) for i, t in enumerate(texts)]
    return r


_next = iter(range(1, 10_000))


def _fb(sid, kind, value=None, edited=None, ranking=None, rid=1, fid=None):
    return Feedback(fid or next(_next), sid, rid, "default", kind, value, edited, ranking, 0, "api", 0.0)


def _data(req, feedback):
    return build_training_data([{"request": req, "suggestions": req.suggestions, "feedback": feedback}])


def _pairs(data):
    return sorted((p.chosen, p.rejected, p.margin) for p in data.pairs)


def test_thumbs_up_beats_down_and_pointwise():
    r = _req()  # ids 10 A, 11 B, 12 C
    d = _data(r, [_fb(10, "thumb", 1), _fb(11, "thumb", -1), _fb(12, "thumb", -1)])
    assert _pairs(d) == [("A", "B", 0.0), ("A", "C", 0.0)]
    assert sorted((p.text, p.target) for p in d.points) == [("A", 1.0), ("B", 0.0), ("C", 0.0)]
    assert all(p.group == "request:1" for p in d.pairs)


def test_two_ups_give_no_pair_between_them():
    r = _req()
    d = _data(r, [_fb(10, "thumb", 1), _fb(11, "thumb", 1)])
    assert d.pairs == []
    assert [p.target for p in d.points] == [1.0, 1.0]


def test_stars_pairs_by_difference_with_margin():
    r = _req()
    d = _data(r, [_fb(10, "stars", 5), _fb(11, "stars", 2), _fb(12, "stars", 2)])
    # 5 vs 2: margin 3 * 0.25; the two 2-star texts tie -> no pair
    assert _pairs(d) == [("A", "B", 0.75), ("A", "C", 0.75)]
    assert sorted((p.text, p.target) for p in d.points) == [("A", 1.0), ("B", 0.25), ("C", 0.25)]
    assert stars_to_target(1) == 0.0 and stars_to_target(3) == 0.5


def test_best_beats_every_sibling():
    d = _data(_req(), [_fb(11, "best")])
    assert _pairs(d) == [("B", "A", 0.0), ("B", "C", 0.0)]
    assert d.points == []


def test_best_pick_after_stars_keeps_their_margin_and_weighs_a_tie_break():
    # A 4 stars, B 2, C 4, D 2; the person picks C as best
    r = _req(("A", "B", "C", "D"))  # ids 10..13
    fb = [_fb(10, "stars", 4), _fb(11, "stars", 2), _fb(12, "stars", 4), _fb(13, "stars", 2), _fb(12, "best")]

    def pairs(d):
        return sorted((p.chosen, p.rejected, p.margin, p.weight) for p in d.pairs)

    # C over B and D: the stars agree, their 2-star margin (0.5) stands; C over A (both 4 stars):
    # a tie-break at full weight by default; A over B and D from the stars alone
    full = [("A", "B", 0.5, 1.0), ("A", "D", 0.5, 1.0), ("C", "A", 0.0, 1.0), ("C", "B", 0.5, 1.0), ("C", "D", 0.5, 1.0)]
    assert pairs(build_training_data([{"request": r, "suggestions": r.suggestions, "feedback": fb}])) == full
    # tie_pick_weight weighs only the tie-break
    half = build_training_data([{"request": r, "suggestions": r.suggestions, "feedback": fb}], tie_pick_weight=0.25)
    assert pairs(half) == [x if x[:2] != ("C", "A") else ("C", "A", 0.0, 0.25) for x in full]
    # 0 drops it
    none = build_training_data([{"request": r, "suggestions": r.suggestions, "feedback": fb}], tie_pick_weight=0.0)
    assert pairs(none) == [x for x in full if x[:2] != ("C", "A")]
    # a best pick without stars is a full-weight pair against every sibling
    d = build_training_data([{"request": r, "suggestions": r.suggestions, "feedback": [_fb(12, "best")]}],
                            tie_pick_weight=0.25)
    assert pairs(d) == [("C", "A", 0.0, 1.0), ("C", "B", 0.0, 1.0), ("C", "D", 0.0, 1.0)]


def test_rank_gives_all_implied_pairs_and_ties_none():
    assert pairs_from_ranking([1, 2, 3]) == [(1, 2), (1, 3), (2, 3)]
    assert pairs_from_ranking([1, [2, 3], 4]) == [(1, 2), (1, 3), (1, 4), (2, 4), (3, 4)]
    assert pairs_from_ranking([[1, 2]]) == []
    d = _data(_req(("A", "B", "C", "D")), [_fb(12, "rank", ranking=[12, 10, 13, 11])])
    # C > A > D > B: 4 choose 2 = 6 pairs
    assert _pairs(d) == sorted([("C", "A", 0.0), ("C", "D", 0.0), ("C", "B", 0.0), ("A", "D", 0.0),
                                ("A", "B", 0.0), ("D", "B", 0.0)])
    tied = _data(_req(("A", "B", "C")), [_fb(10, "rank", ranking=[10, [11, 12]])])
    assert _pairs(tied) == [("A", "B", 0.0), ("A", "C", 0.0)]


def test_edit_beats_the_original_and_every_sibling():
    d = _data(_req(), [_fb(10, "edit", edited="A, but better")])
    assert _pairs(d) == [("A, but better", "A", 0.0), ("A, but better", "B", 0.0), ("A, but better", "C", 0.0)]


def test_accept_beats_unaccepted_siblings():
    d = _data(_req(), [_fb(10, "accept", 1), _fb(12, "accept", 1)])
    assert _pairs(d) == [("A", "B", 0.0), ("C", "B", 0.0)]


def test_edits_and_accepts_beat_every_unshown_sample_of_the_request():
    # the reward-guided choice drew D and E too but showed A, B, C (DITTO: a demonstration beats
    # every model sample of the request)
    req = _req(options={"choice": {"unshown": ["D", "E"]}})
    d = _data(req, [_fb(11, "accept", 1)])
    assert _pairs(d) == [("B", "A", 0.0), ("B", "C", 0.0), ("B", "D", 0.0), ("B", "E", 0.0)]
    d = _data(req, [_fb(12, "edit", edited="C2")])
    assert _pairs(d) == [("C2", t, 0.0) for t in "ABCDE"]
    # stars and best stay among what was shown: the person never saw D or E
    d = _data(req, [_fb(10, "best"), _fb(10, "stars", 5), _fb(11, "stars", 1)])
    assert {p.rejected for p in d.pairs} == {"B", "C"} and all(p.group == "request:1" for p in d.pairs)


def test_contradiction_keeps_latest():
    # thumbs say A > B; later, "best" says B (so B > A, B > C)
    d = _data(_req(), [_fb(10, "thumb", 1, fid=1), _fb(11, "thumb", -1, fid=2), _fb(11, "best", fid=3)])
    assert _pairs(d) == [("B", "A", 0.0), ("B", "C", 0.0)]
    # the other order: best first, then thumbs -> A > B wins, B > C stays
    d = _data(_req(), [_fb(11, "best", fid=1), _fb(10, "thumb", 1, fid=2), _fb(11, "thumb", -1, fid=3)])
    assert _pairs(d) == [("A", "B", 0.0), ("B", "C", 0.0)]
    # a changed thumb: only the latest per suggestion counts
    d = _data(_req(), [_fb(10, "thumb", 1, fid=1), _fb(10, "thumb", -1, fid=2), _fb(11, "thumb", 1, fid=3)])
    assert _pairs(d) == [("B", "A", 0.0)]
    assert sorted((p.text, p.target) for p in d.points) == [("A", 0.0), ("B", 1.0)]


def test_pairs_stay_within_one_request():
    r1, r2 = _req(("A", "B"), rid=1), _req(("C", "D"), rid=2)
    groups = [
        {"request": r1, "suggestions": r1.suggestions, "feedback": [_fb(10, "thumb", 1, rid=1)]},
        {"request": r2, "suggestions": r2.suggestions, "feedback": [_fb(21, "thumb", -1, rid=2)]},
    ]
    d = build_training_data(groups)
    assert d.pairs == []  # an up in one request never beats a down in another
    assert len(d.points) == 2 and {p.group for p in d.points} == {"request:1", "request:2"}


def test_context_of_carries_mode_style_keywords_and_text():
    r = _req(mode="restyle", text="The cat sat.", options={"style": "vivid", "keywords": ["sea", "salt"]})
    ctx = context_of(r)
    assert ctx.startswith("mode: restyle | style: vivid | keywords: sea, salt\n")
    assert ctx.endswith("The cat sat.")
    assert context_of(_req(mode="imported", text="Q?")) == "Q?"
    d = _data(r, [_fb(10, "best")])
    assert all(isinstance(p, PreferencePair) and p.context == ctx for p in d.pairs)


@pytest.mark.parametrize("kind,kw", [("thumb", {"value": 1}), ("stars", {"value": 4}), ("best", {}),
                                     ("accept", {"value": 1}), ("edit", {"edited_text": "Better words."})])
def test_feedback_through_services_becomes_training_data(tiny_services, kind, kw):
    from assistant.app.services import SuggestRequest
    from reward.feedback import build_training_data as btd

    resp = tiny_services.suggest(SuggestRequest(mode="continue", text="The rain fell.", k=3, seed=1,
                                                max_new_tokens=8))
    ids = [s["id"] for s in resp.suggestions]
    texts = {s["id"]: s["text"] for s in resp.suggestions}
    tiny_services.feedback(ids[0], kind, **kw)
    if kind in ("thumb",):
        tiny_services.feedback(ids[1], "thumb", value=-1)
    if kind == "stars":
        tiny_services.feedback(ids[1], "stars", value=2)
    data = btd(tiny_services.store.requests_with_feedback("default"))
    assert data.pairs, f"{kind} produced no pairs"
    assert all(p.group == f"request:{resp.request_id}" for p in data.pairs)
    chosen = {p.chosen for p in data.pairs}
    if kind == "edit":
        assert chosen == {"Better words."}
        assert {p.rejected for p in data.pairs} == set(texts.values())  # the original and every sibling
    else:
        assert texts[ids[0]] in chosen
    if kind == "stars":
        assert any(p.margin == 0.5 for p in data.pairs)  # 4 vs 2 stars
        assert sorted(p.target for p in data.points) == [0.25, 0.75]


def test_rank_through_services(tiny_services):
    from assistant.app.services import SuggestRequest

    resp = tiny_services.suggest(SuggestRequest(mode="continue", text="The rain fell.", k=3, seed=2,
                                                max_new_tokens=8))
    ids = [s["id"] for s in resp.suggestions]
    texts = [s["text"] for s in resp.suggestions]
    if len(set(texts)) < 3:
        pytest.skip("tiny model produced duplicate candidates")
    tiny_services.feedback(ids[2], "rank", ranking=[ids[2], ids[0], ids[1]])
    d = build_training_data(tiny_services.store.requests_with_feedback("default"))
    assert sorted((p.chosen, p.rejected) for p in d.pairs) == sorted(
        [(texts[2], texts[0]), (texts[2], texts[1]), (texts[0], texts[1])])
