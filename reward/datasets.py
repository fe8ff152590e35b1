"""Rating files -> reward training data, and the store's feedback -> rows of the file formats.

Reading and writing the TRL-style JSONL files is storage's (storage.jsonl); turning their records
into preference pairs and pointwise targets, with the same semantics as the store's own feedback
(reward.feedback), is learning's and lives here.

A group of ratings under one prompt holds a pair for every two ratings that differ: n(n-1)/2,
about 2 million for 2,000 paragraphs rated under one empty prompt. Pairs are therefore bounded:
a group small enough keeps every pair; a larger one compares each item with `pairs_per_item`
others drawn deterministically (seeded by the prompt), so every item is in at least that many
pairs and the group holds at most ``n * pairs_per_item``. `PairStats` counts what was dropped,
for the command to say so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from reward.feedback import (
    STAR_MARGIN_PER_STEP,
    PointwiseTarget,
    PreferencePair,
    RewardData,
    build_training_data,
    context_of,
)
from storage.jsonl import FORMATS, ParsedFile, parse_file, write_jsonl
from storage.records import text_hash
from storage.store import Store

__all__ = ["FORMATS", "PAIRS_PER_ITEM", "PairStats", "export_feedback", "export_rows", "load_reward_data",
           "normalise_ratings", "prompt_group", "to_reward_data"]

PAIRS_PER_ITEM = 8
"""Each rated item of a large group is compared with this many others (small groups: all pairs)."""


@dataclass
class PairStats:
    """Pairs a file's groups hold (ratings that differ) and the pairs built from them."""

    possible: int = 0
    built: int = 0
    sampled_groups: int = 0
    pairs_per_item: int = PAIRS_PER_ITEM

    @property
    def dropped(self) -> int:
        return self.possible - self.built

    def describe(self) -> str:
        if not self.dropped:
            return f"{self.built:,} preference pairs (every pair of differing ratings under a prompt)"
        return (f"{self.built:,} of {self.possible:,} possible preference pairs built ({self.dropped:,} dropped): "
                f"in {self.sampled_groups} large prompt group(s) each rating is compared with "
                f"{self.pairs_per_item} others drawn at random (seeded by the prompt); every rating is "
                f"still a pointwise target")


def normalise_ratings(ratings: list[float]) -> tuple[float, float]:
    """(lo, hi) of the rating scale: [0, 1] if all ratings fit, else 1-5 stars if they fit, else
    the file's own min and max."""
    if all(0.0 <= r <= 1.0 for r in ratings):
        return 0.0, 1.0
    if all(1.0 <= r <= 5.0 for r in ratings):
        return 1.0, 5.0
    lo, hi = min(ratings), max(ratings)
    return lo, hi if hi > lo else lo + 1.0


def prompt_group(prompt: str) -> str:
    return "prompt:" + text_hash(prompt)[:16]


def _differing_pairs(targets: list[float]) -> int:
    """Unordered pairs of items whose targets differ."""
    n, same = len(targets), {}
    for t in targets:
        same[t] = same.get(t, 0) + 1
    return n * (n - 1) // 2 - sum(k * (k - 1) // 2 for k in same.values())


def bounded_pairs(prompt: str, n: int, pairs_per_item: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) of a group of n items: all of them when n - 1 <= 2 * pairs_per_item
    (no more than sampling would give), else each item with `pairs_per_item` distinct others drawn
    by a generator seeded with the prompt (the same file gives the same pairs), deduplicated."""
    if n - 1 <= 2 * pairs_per_item:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    rng = random.Random(int(text_hash(prompt)[:16], 16))
    out: set[tuple[int, int]] = set()
    for i in range(n):
        for k in rng.sample(range(n - 1), pairs_per_item):
            j = k + (k >= i)  # the others: every index but i
            out.add((min(i, j), max(i, j)))
    return sorted(out)


def to_reward_data(parsed: ParsedFile, source: str = "", pairs_per_item: int = PAIRS_PER_ITEM,
                   stats: PairStats | None = None) -> RewardData:
    """Records -> RewardData (grouped by prompt; same semantics as the store: ratings and labels
    give pointwise targets and within-prompt pairs, bounded per group as the module says; `stats`,
    when given, adds up what was possible and what was built)."""
    if pairs_per_item < 1:
        raise ValueError("pairs_per_item must be >= 1")
    stats = stats if stats is not None else PairStats(pairs_per_item=pairs_per_item)
    source = source or Path(parsed.path).name
    data = RewardData()
    if parsed.format == "preference":
        for r in parsed.records:
            data.pairs.append(PreferencePair(r.prompt, r.chosen, r.rejected, r.margin, 1.0, prompt_group(r.prompt),
                                             source))
        stats.possible += len(parsed.records)
        stats.built += len(parsed.records)
        return data
    by_prompt: dict[str, dict[str, float]] = {}
    if parsed.format == "ratings":
        lo, hi = normalise_ratings([r.rating for r in parsed.records])
        for r in parsed.records:  # the latest rating of a completion wins
            by_prompt.setdefault(r.prompt, {})[r.completion] = (r.rating - lo) / (hi - lo)
        step = STAR_MARGIN_PER_STEP * 4  # margin per unit of normalised rating (1 star = 0.25)
    else:
        for r in parsed.records:
            by_prompt.setdefault(r.prompt, {})[r.completion] = 1.0 if r.label else 0.0
        step = 0.0
    for prompt, comp in by_prompt.items():
        g = prompt_group(prompt)
        items = list(comp.items())
        for text, t in items:
            data.points.append(PointwiseTarget(prompt, text, t, 1.0, g, source))
        index_pairs = bounded_pairs(prompt, len(items), pairs_per_item)
        built = 0
        for i, j in index_pairs:
            (a, ta), (b, tb) = items[i], items[j]
            if ta != tb:
                (a, ta), (b, tb) = ((a, ta), (b, tb)) if ta > tb else ((b, tb), (a, ta))
                data.pairs.append(PreferencePair(prompt, a, b, step * (ta - tb), 1.0, g, source))
                built += 1
        stats.possible += _differing_pairs([t for _, t in items])
        stats.built += built
        stats.sampled_groups += len(index_pairs) < len(items) * (len(items) - 1) // 2
    return data


def load_reward_data(paths: Iterable[str | Path], fmt: str = "auto", limit: int | None = None,
                     pairs_per_item: int = PAIRS_PER_ITEM, stats: PairStats | None = None) -> RewardData:
    """Several files -> one RewardData (each validated whole; pairs bounded per group)."""
    data = RewardData()
    for p in paths:
        data = data.extend(to_reward_data(parse_file(p, fmt, limit), pairs_per_item=pairs_per_item, stats=stats))
    return data


# ----------------------------------------------------------------------------- store -> file rows
def export_rows(store: Store, fmt: str, profile_id: str | None = "default") -> list[dict[str, Any]]:
    """The store's feedback as rows of one format (prompt = the context the reward model sees)."""
    groups = store.requests_with_feedback(profile_id)
    if fmt == "preference":
        return [{"prompt": p.context, "chosen": p.chosen, "rejected": p.rejected, "margin": float(p.margin)}
                for p in build_training_data(groups).pairs]
    if fmt not in ("ratings", "unpaired"):
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
    kind = "stars" if fmt == "ratings" else "thumb"
    rows = []
    for g in groups:
        ctx = context_of(g["request"])
        text = {s.id: s.text for s in g["suggestions"]}
        latest: dict[int, Any] = {}
        for f in sorted(g["feedback"], key=lambda f: f.id):
            if f.kind == kind:
                latest[f.suggestion_id] = f
        for sid, f in sorted(latest.items()):
            if fmt == "ratings":
                rows.append({"prompt": ctx, "completion": text[sid], "rating": int(f.value)})
            else:
                rows.append({"prompt": ctx, "completion": text[sid], "label": bool((f.value or 0) > 0)})
    return rows


def export_feedback(store: Store, fmt: str, out: str | Path, profile_id: str | None = "default") -> int:
    rows = export_rows(store, fmt, profile_id)
    write_jsonl(rows, out)
    return len(rows)
