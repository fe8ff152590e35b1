"""Import / export of feedback as TRL-style JSONL."""

from __future__ import annotations

import json

import pytest

from reward.datasets import (
    export_feedback,
    export_rows,
    load_reward_data,
    to_reward_data,
)
from storage.jsonl import (
    DatasetError,
    import_into_store,
    parse_file,
    split_implicit_prompt,
)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_explicit_conversational_and_implicit_preference_forms(tmp_path):
    f = _write(tmp_path / "p.jsonl", [
        {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "Go away."},
        {"prompt": [{"role": "user", "content": "Say hi."}],
         "chosen": [{"role": "assistant", "content": "Hi!"}], "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": "\n\nHuman: Help?\n\nAssistant: Sure, here is how.",
         "rejected": "\n\nHuman: Help?\n\nAssistant: Sure, no."},
        {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]},
    ])
    parsed = parse_file(f)
    assert parsed.format == "preference"
    r = parsed.records
    assert (r[0].prompt, r[0].chosen, r[0].rejected) == ("Say hi.", "Hello there!", "Go away.")
    assert (r[1].prompt, r[1].chosen, r[1].rejected) == ("User: Say hi.", "Hi!", "No.")
    # implicit prompt: cut after the last shared "Assistant:" (not inside the shared "Sure, ")
    assert (r[2].prompt, r[2].chosen, r[2].rejected) == (
        "\n\nHuman: Help?\n\nAssistant: ", "Sure, here is how.", "Sure, no.")
    assert (r[3].prompt, r[3].chosen, r[3].rejected) == ("User: Q", "good", "bad")
    assert [x.line for x in r] == [1, 2, 3, 4]


def test_split_implicit_prompt_without_marker():
    assert split_implicit_prompt("The cat sat down.", "The cat ran off.") == ("The cat ", "sat down.", "ran off.")


def test_malformed_file_reports_line_numbers_and_imports_nothing(tmp_path, store):
    f = _write(tmp_path / "bad.jsonl", [
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        "{not json",
        {"prompt": "b", "chosen": "x"},
        "",
        {"prompt": "c", "chosen": 3, "rejected": "y"},
        {"prompt": "d", "chosen": "same", "rejected": "same"},
    ])
    with pytest.raises(DatasetError) as ei:
        parse_file(f)
    assert [n for n, _ in ei.value.errors] == [2, 3, 5, 6]
    msg = str(ei.value)
    assert "line 2" in msg and "line 3" in msg and "missing 'rejected'" in msg and "nothing was imported" in msg
    assert store.counts()["requests"] == 0 and store.counts()["feedback"] == 0


def test_non_finite_numbers_and_corrupt_gzip_are_reported(tmp_path):
    f = tmp_path / "inf.jsonl"  # json.loads accepts Infinity/NaN; they would poison the normalisation
    f.write_text('{"prompt": "p", "completion": "a", "rating": Infinity}\n'
                 '{"prompt": "p", "completion": "b", "rating": NaN}\n'
                 '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": -Infinity}\n')
    with pytest.raises(DatasetError) as ei:
        parse_file(f, "ratings")
    assert [n for n, _ in ei.value.errors] == [1, 2, 3]
    with pytest.raises(DatasetError) as ei:
        parse_file(f, "preference")
    assert [n for n, _ in ei.value.errors] == [1, 2, 3]
    assert "finite" in ei.value.errors[2][1]
    gz = tmp_path / "bad.jsonl.gz"
    gz.write_bytes(b"this is not gzip data")
    with pytest.raises(DatasetError, match="cannot be read"):
        parse_file(gz)


def test_store_import_is_all_or_nothing(tmp_path, store):
    # valid JSON throughout, but a rating the store cannot hold (7 is not 1-5 stars)
    f = _write(tmp_path / "r.jsonl", [{"prompt": "p", "completion": "a", "rating": 5},
                                      {"prompt": "p", "completion": "b", "rating": 7}])
    with pytest.raises(DatasetError) as ei:
        import_into_store(store, parse_file(f))
    assert ei.value.errors[0][0] == 2
    assert store.counts()["requests"] == 0 and store.counts()["feedback"] == 0


def test_import_export_round_trip_and_load_dataset(tmp_path, store):
    datasets = pytest.importorskip("datasets")
    pref = [
        {"prompt": "Describe the sea.", "chosen": "Grey waves roll in.", "rejected": "Sea is water."},
        {"prompt": "Describe the sea.", "chosen": "Grey waves roll in.", "rejected": "It is wet."},
        {"prompt": "Name a fruit.", "chosen": "A ripe fig.", "rejected": "Rocks."},
    ]
    f = _write(tmp_path / "pref.jsonl", pref)
    summary = import_into_store(store, parse_file(f))
    assert summary == {"requests": 2, "feedback": 3, "records": 3, "skipped": 0}
    fb = store.feedback("default")
    assert {x.source for x in fb} == {"import"} and {x.kind for x in fb} == {"rank"}
    out = tmp_path / "out.jsonl"
    assert export_feedback(store, "preference", out) == 3
    got = sorted((r["prompt"], r["chosen"], r["rejected"]) for r in map(json.loads, out.read_text().splitlines()))
    assert got == sorted((r["prompt"], r["chosen"], r["rejected"]) for r in pref)
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert ds.num_rows == 3 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)

    ratings = [{"prompt": "Rate me.", "completion": "Fine prose.", "rating": 4},
               {"prompt": "Rate me.", "completion": "Bad prose.", "rating": 1}]
    import_into_store(store, parse_file(_write(tmp_path / "rat.jsonl", ratings)))
    rows = export_rows(store, "ratings")
    assert sorted((r["prompt"], r["completion"], r["rating"]) for r in rows) == sorted(
        (r["prompt"], r["completion"], r["rating"]) for r in ratings)

    unpaired = [{"prompt": "Q", "completion": "Good.", "label": True},
                {"prompt": "Q", "completion": "Bad.", "label": False}]
    import_into_store(store, parse_file(_write(tmp_path / "u.jsonl", unpaired)))
    out_u = tmp_path / "u_out.jsonl"
    assert export_feedback(store, "unpaired", out_u) == 2
    ds = datasets.load_dataset("json", data_files=str(out_u), split="train")
    assert sorted(zip(ds["completion"], ds["label"])) == [("Bad.", False), ("Good.", True)]
    # the ratings and the thumbs also became preference pairs in the store's export
    pairs = {(r["chosen"], r["rejected"]) for r in export_rows(store, "preference")}
    assert ("Fine prose.", "Bad prose.") in pairs and ("Good.", "Bad.") in pairs


def test_files_to_reward_data(tmp_path):
    f = _write(tmp_path / "r.jsonl", [{"prompt": "p", "completion": "a", "rating": 10},
                                      {"prompt": "p", "completion": "b", "rating": 4},
                                      {"prompt": "q", "completion": "c", "rating": 7}])
    d = to_reward_data(parse_file(f))
    # scale 4..10 (not 0-1, not 1-5): targets (r - 4) / 6
    assert sorted((p.text, round(p.target, 3)) for p in d.points) == [("a", 1.0), ("b", 0.0), ("c", 0.5)]
    assert [(p.chosen, p.rejected, p.margin) for p in d.pairs] == [("a", "b", 1.0)]
    assert len({p.group for p in d.points}) == 2  # grouped by prompt
    u = _write(tmp_path / "u.jsonl", [{"prompt": "p", "completion": "a", "label": True},
                                      {"prompt": "p", "completion": "b", "label": False}])
    both = load_reward_data([f, u])
    assert len(both.points) == 5 and ("a", "b") in {(p.chosen, p.rejected) for p in both.pairs}


def test_one_prompt_ratings_file_builds_bounded_pairs_and_says_so(tmp_path):
    from reward.datasets import PAIRS_PER_ITEM, PairStats

    n = 2000  # 2,000 paragraphs rated under one empty prompt: ~2 million pairs if every pair were built
    f = _write(tmp_path / "one_prompt.jsonl",
               [{"prompt": "", "completion": f"paragraph {i}", "rating": 1 + i % 5} for i in range(n)])
    stats = PairStats()
    d = load_reward_data([f], stats=stats)
    assert len(d.points) == n  # every rating stays a pointwise target
    assert stats.possible == n * (n - 1) // 2 - 5 * (400 * 399 // 2)  # pairs whose ratings differ
    assert len(d.pairs) == stats.built <= n * PAIRS_PER_ITEM and stats.dropped > 1_500_000
    assert all(p.margin > 0 for p in d.pairs)  # chosen is always the better-rated one
    per_item = {}
    for p in d.pairs:
        for t in (p.chosen, p.rejected):
            per_item[t] = per_item.get(t, 0) + 1
    assert min(per_item.values()) >= 4  # every item is compared (8 drawn, ~4/5 of them differ)
    assert "dropped" in stats.describe() and f"{stats.built:,}" in stats.describe()
    again = load_reward_data([f])  # deterministic: the same file gives the same pairs
    assert [(p.chosen, p.rejected) for p in again.pairs] == [(p.chosen, p.rejected) for p in d.pairs]


def test_small_groups_keep_every_pair():
    from reward.datasets import bounded_pairs

    assert bounded_pairs("p", 4, 8) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    big = bounded_pairs("p", 100, 3)
    assert len(big) <= 300 and all(i < j for i, j in big) and {i for pair in big for i in pair} == set(range(100))
