"""Feedback -> training data for the reward model (pure: no I/O, no model).

Every kind of feedback the UI collects becomes preference pairs (``chosen`` beats ``rejected`` in
the same context, optionally with a margin) and/or pointwise targets in [0, 1]:

=========  ==============================================================  ======================
kind       pairs (only within one request)                                 pointwise target
=========  ==============================================================  ======================
thumb      every "up" beats every "down" of the same request               up 1.0, down 0.0
stars      s_i > s_j gives (i beats j) with margin (s_i - s_j) / 4         (s - 1) / 4
best       the best suggestion beats every sibling (with the stars' margin   --
           when they agree; weight ``tie_pick_weight`` against a sibling
           given the same stars)
rank       all implied pairs of the ranking (best first); ties: no pair    --
edit       the person's edited text beats the original suggestion, every   --
           sibling and every unshown sample of the request
accept     an accepted suggestion beats every unaccepted sibling and       --
           every unshown sample of the request
=========  ==============================================================  ======================

Edits and accepts are demonstrations: as in DITTO (Shaikh et al. 2024, arXiv 2406.00888), what the
person wrote or took is preferred over *every* model sample of that request -- the siblings shown
and, with the reward-guided choice, the candidates drawn but not shown (the request's
``options["choice"]["unshown"]``).

Only within-request contrasts become pairs: two texts of one request share the context, the
prompt and the policy that wrote them, so their difference is the person's taste and nothing else.
The pointwise targets (stars as an absolute level) are the only signal across requests; the
trainer weighs them by ``RewardTrainConfig.pointwise_weight``.

A best pick among candidates the person gave the same stars is a finer judgement than the stars,
but a weaker one: when none of them has what the person looks for (a sparse taste: most of a
request's candidates get one star), the pick among them is close to a coin toss, and three of the
request's pairs would be noise at full weight. ``build_training_data(tie_pick_weight=...)`` weighs
those pairs (``RewardTrainConfig.tie_pick_weight``).

Contradictory feedback on the same pair (e.g. thumbs say A > B, a later "best" says B) keeps the
latest vote (highest feedback id). Each suggestion keeps only its latest pointwise target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from assistant.lm.prompts import _tail

STAR_MARGIN_PER_STEP = 0.25
"""BT margin (in reward units) per star of difference: 5 vs 1 stars -> margin 1.0."""

CONTEXT_TAIL_CHARS = 2000
"""How much of a request's text (its end) goes into the context the RM conditions on."""


@dataclass
class PreferencePair:
    """``chosen`` is better than ``rejected`` as a reply to ``context``."""

    context: str
    chosen: str
    rejected: str
    margin: float = 0.0
    """Bradley-Terry margin: the loss asks for r(chosen) - r(rejected) > margin."""
    weight: float = 1.0
    """Per-pair loss weight."""
    group: str = ""
    """Request / prompt id: held-out splits never separate one group."""
    source: str = ""
    """Where the signal came from (feedback kind and source, or a dataset name)."""


@dataclass
class PointwiseTarget:
    """An absolute quality target for one text in a context (e.g. from stars)."""

    context: str
    text: str
    target: float
    """In [0, 1]; 1 is best."""
    weight: float = 1.0
    group: str = ""
    source: str = ""


@dataclass
class RewardData:
    """Everything one reward-model training run sees."""

    pairs: list[PreferencePair] = field(default_factory=list)
    points: list[PointwiseTarget] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs) + len(self.points)

    def extend(self, other: "RewardData") -> "RewardData":
        return RewardData(self.pairs + other.pairs, self.points + other.points)

    def groups(self) -> list[str]:
        """Distinct groups in first-seen order."""
        seen: dict[str, None] = {}
        for x in [*self.pairs, *self.points]:
            seen.setdefault(x.group, None)
        return list(seen)

    def select(self, groups: Iterable[str]) -> "RewardData":
        keep = set(groups)
        return RewardData([p for p in self.pairs if p.group in keep], [p for p in self.points if p.group in keep])


# ----------------------------------------------------------------------------- context
def context_of(request: Any) -> str:
    """The text the reward model conditions on for a ``storage.store.Request``: the mode, the
    style / keywords / inspire kind that shaped the request, then (the end of) the person's text.

    Imported requests (mode ``imported``) are conditioned on their prompt text alone."""
    mode = getattr(request, "mode", "") or ""
    text = getattr(request, "text", "") or ""
    if mode == "imported":
        return text
    opts = getattr(request, "options", None) or {}
    head = [f"mode: {mode}"]
    style = opts.get("style")
    if mode == "restyle":
        if style in (None, "", "sample", "imitate"):
            sample = (opts.get("sample") or "").strip()
            head.append("style: like this sample: " + _tail(sample, 300))
        else:
            head.append(f"style: {style}")
    if opts.get("keywords"):
        kws = opts["keywords"]
        head.append("keywords: " + (", ".join(kws) if isinstance(kws, (list, tuple)) else str(kws)))
    if mode == "inspire" and opts.get("inspire_kind"):
        head.append(f"kind: {opts['inspire_kind']}")
    return " | ".join(head) + "\n" + _tail(text, CONTEXT_TAIL_CHARS)


# ----------------------------------------------------------------------------- small pure helpers
def pairs_from_ranking(ranking: Sequence[Any]) -> list[tuple[Any, Any]]:
    """All (better, worse) pairs implied by a ranking, best first. An element may be a list/tuple
    of items tied at that rank: tied items give no pair with each other.

    >>> pairs_from_ranking(["a", ["b", "c"], "d"])
    [('a', 'b'), ('a', 'c'), ('a', 'd'), ('b', 'd'), ('c', 'd')]
    """
    tiers = [list(t) if isinstance(t, (list, tuple)) else [t] for t in ranking]
    out = []
    for i, hi in enumerate(tiers):
        for lo in tiers[i + 1 :]:
            for a in hi:
                for b in lo:
                    if a != b:
                        out.append((a, b))
    return out


def unshown_of(request: Any) -> list[str]:
    """The candidates a request drew but did not show (the reward-guided choice's
    ``options["choice"]["unshown"]``; none without it)."""
    unshown = ((getattr(request, "options", None) or {}).get("choice") or {}).get("unshown") or []
    return [u for u in unshown if isinstance(u, str) and u.strip()]


def drawn_texts(request: Any) -> list[str]:
    """Every distinct non-empty candidate a request drew, in order: the suggestions shown, then
    those drawn but not shown."""
    shown = [s.text for s in getattr(request, "suggestions", None) or []]
    return list(dict.fromkeys(t for t in shown + unshown_of(request) if t.strip()))


def stars_to_target(stars: float) -> float:
    """1..5 stars -> [0, 1]."""
    return (float(stars) - 1.0) / 4.0


# ----------------------------------------------------------------------------- feedback -> data
@dataclass
class _Vote:
    order: float  # feedback id (later = larger); for pairs built from two rows, the later one
    chosen: str
    rejected: str
    margin: float
    source: str
    weight: float = 1.0


def _latest(items: Iterable[Any]) -> dict[int, Any]:
    """Latest feedback row per suggestion id."""
    out: dict[int, Any] = {}
    for f in sorted(items, key=lambda f: f.id):
        out[f.suggestion_id] = f
    return out


def _src(f: Any) -> str:
    return f"{f.kind}:{getattr(f, 'source', '') or ''}"


def request_votes(suggestions: Sequence[Any], feedback: Sequence[Any], unshown: Sequence[str] = (),
                  tie_pick_weight: float = 1.0) -> tuple[list[_Vote], dict[int, tuple[float, float, str]]]:
    """Pair votes and pointwise targets (suggestion id -> (order, target, source)) of one request.
    ``unshown``: the request's other samples, drawn but not shown (edits and accepts beat them too).
    ``tie_pick_weight``: the weight of a best pick over a sibling with the same stars (0: no pair)."""
    text = {s.id: s.text for s in suggestions}
    votes: list[_Vote] = []
    points: dict[int, tuple[float, float, str]] = {}
    by_kind: dict[str, list[Any]] = {}
    for f in feedback:
        if f.suggestion_id in text:
            by_kind.setdefault(f.kind, []).append(f)

    # thumbs: latest per suggestion; ups beat downs; pointwise 1 / 0
    thumbs = _latest(by_kind.get("thumb", []))
    for sid, f in thumbs.items():
        points[sid] = max(points.get(sid, (-1, 0, "")), (f.id, 1.0 if (f.value or 0) > 0 else 0.0, _src(f)))
    for a, fa in thumbs.items():
        for b, fb in thumbs.items():
            if (fa.value or 0) > 0 and (fb.value or 0) < 0:
                votes.append(_Vote(max(fa.id, fb.id), text[a], text[b], 0.0, _src(fa if fa.id > fb.id else fb)))

    # stars: latest per suggestion; pairs by difference with a margin; pointwise (s-1)/4
    stars = _latest(by_kind.get("stars", []))
    for sid, f in stars.items():
        points[sid] = max(points.get(sid, (-1, 0, "")), (f.id, stars_to_target(f.value), _src(f)))
    for a, fa in stars.items():
        for b, fb in stars.items():
            if fa.value > fb.value:
                votes.append(
                    _Vote(max(fa.id, fb.id), text[a], text[b], STAR_MARGIN_PER_STEP * (fa.value - fb.value),
                          _src(fa if fa.id > fb.id else fb))
                )

    # best: the best beats every sibling; where the stars agree their margin stands, and against a
    # sibling with the same stars the pick is a tie-break, weighted tie_pick_weight
    for f in by_kind.get("best", []):
        sb = stars.get(f.suggestion_id)
        for s in suggestions:
            if s.id == f.suggestion_id:
                continue
            ss = stars.get(s.id)
            diff = (sb.value - ss.value) if sb is not None and ss is not None else None
            if diff == 0 and tie_pick_weight <= 0:
                continue
            votes.append(_Vote(f.id, text[f.suggestion_id], s.text,
                               STAR_MARGIN_PER_STEP * diff if diff is not None and diff > 0 else 0.0, _src(f),
                               tie_pick_weight if diff == 0 else 1.0))

    # rank: all implied pairs (an element may be a list of tied ids)
    for f in by_kind.get("rank", []):
        for a, b in pairs_from_ranking(f.ranking or []):
            if a in text and b in text:
                votes.append(_Vote(f.id, text[a], text[b], 0.0, _src(f)))

    # edit: the edited text beats the original suggestion, every sibling and every unshown sample
    unshown = [u for u in unshown if isinstance(u, str) and u.strip()]
    for f in by_kind.get("edit", []):
        if f.edited_text and f.edited_text.strip():
            votes.append(_Vote(f.id, f.edited_text, text[f.suggestion_id], 0.0, _src(f)))
            for other in [s.text for s in suggestions if s.id != f.suggestion_id] + unshown:
                votes.append(_Vote(f.id, f.edited_text, other, 0.0, _src(f)))

    # accept: accepted beats every unaccepted sibling and every unshown sample (an accept with
    # value <= 0 is a retraction)
    accepts = _latest(by_kind.get("accept", []))
    accepted = {sid: f for sid, f in accepts.items() if f.value is None or f.value > 0}
    for sid, f in accepted.items():
        for other in [s.text for s in suggestions if s.id not in accepted] + unshown:
            votes.append(_Vote(f.id, text[sid], other, 0.0, _src(f)))
    return votes, points


def resolve_votes(votes: Iterable[_Vote]) -> list[_Vote]:
    """One vote per unordered pair of texts: the latest (highest order; on equal order the one
    listed later). Pairs of identical texts are dropped."""
    latest: dict[frozenset, _Vote] = {}
    for v in votes:
        if v.chosen == v.rejected:
            continue
        key = frozenset((v.chosen, v.rejected))
        if key not in latest or v.order >= latest[key].order:
            latest[key] = v
    return list(latest.values())


def build_training_data(groups: Sequence[dict[str, Any]], tie_pick_weight: float = 1.0) -> RewardData:
    """``Store.requests_with_feedback(profile)`` output -> pairs and pointwise targets.
    ``tie_pick_weight``: see request_votes (the learner passes ``RewardTrainConfig.tie_pick_weight``)."""
    data = RewardData()
    for g in groups:
        req = g["request"]
        ctx = context_of(req)
        group = f"request:{req.id}"
        suggestions = g.get("suggestions") or getattr(req, "suggestions", [])
        votes, points = request_votes(suggestions, g["feedback"], unshown_of(req), tie_pick_weight)
        for v in sorted(resolve_votes(votes), key=lambda v: v.order):
            data.pairs.append(PreferencePair(ctx, v.chosen, v.rejected, v.margin, v.weight, group, v.source))
        text = {s.id: s.text for s in suggestions}
        for sid, (_order, target, source) in sorted(points.items()):
            data.points.append(PointwiseTarget(ctx, text[sid], target, 1.0, group, source))
    return data
