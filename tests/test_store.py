"""Store: round trips of every method group, migrations, concurrency, restart, bad input."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest
import sqlite_utils

from storage import schema
from storage.records import NotFound, StoreError, text_hash
from storage.store import Store


def _request(store: Store, n: int = 3, profile: str = "default", version: int = 0):
    return store.record_request(
        profile_id=profile,
        mode="continue",
        text="The rain had not stopped.",
        options={"k": n, "temperature": 0.8},
        prompt="<prompt>",
        policy_version=version,
        suggestions=[f"candidate {i}" for i in range(n)],
    )


def _counts(store: Store) -> dict[str, int]:
    return store.counts()


# ----------------------------------------------------------------------------- profiles and documents
def test_profiles_and_documents_round_trip(store):
    assert store.ensure_profile("alice") == "alice"
    assert store.ensure_profile("alice") == "alice"  # idempotent
    assert "alice" in store.profiles()
    with pytest.raises(StoreError):
        store.ensure_profile("x" * 65)

    did = store.save_document("alice", "first draft", title="T")
    assert store.get_document(did)["text"] == "first draft"
    assert store.save_document("alice", "second draft", title="T2", document_id=did) == did
    doc = store.get_document(did)
    assert (doc["text"], doc["title"]) == ("second draft", "T2")
    assert store.latest_document("alice")["id"] == did
    assert store.latest_document("nobody") is None
    with pytest.raises(NotFound):
        store.get_document(999)
    with pytest.raises(NotFound):
        store.save_document("alice", "x", document_id=999)


# ----------------------------------------------------------------------------- requests and suggestions
def test_request_round_trip(store):
    req = _request(store, n=3, version=2)
    assert [s.idx for s in req.suggestions] == [0, 1, 2]
    assert all(s.policy_version == 2 for s in req.suggestions)
    got = store.get_request(req.id)
    assert got.options == {"k": 3, "temperature": 0.8}
    assert got.prompt == "<prompt>" and got.policy_version == 2
    assert [s.text for s in got.suggestions] == ["candidate 0", "candidate 1", "candidate 2"]
    assert store.get_suggestion(req.suggestions[1].id).text == "candidate 1"
    assert [r.id for r in store.recent_requests("default")] == [req.id]
    assert store.recent_requests("default", mode="inspire") == []
    assert store.counts() == {"requests": 1, "suggestions": 3, "feedback": 0, "documents": 0, "library": 0}
    assert store.counts("other")["suggestions"] == 0
    with pytest.raises(NotFound):
        store.get_request(999)
    with pytest.raises(NotFound):
        store.get_suggestion(999)


# ----------------------------------------------------------------------------- feedback
def test_every_feedback_kind_round_trip(store):
    req = _request(store, n=3, version=1)
    a, b, c = (s.id for s in req.suggestions)
    ids = [
        store.add_feedback(a, "thumb", 1),
        store.add_feedback(b, "thumb", -1, source="ui"),
        store.add_feedback(a, "stars", 5),
        store.add_feedback(b, "best"),
        store.add_feedback(c, "rank", ranking=[c, a, b]),
        store.add_feedback(a, "edit", edited_text="a better sentence."),
        store.add_feedback(a, "accept", 1),
    ]
    assert ids == sorted(ids)
    fb = store.feedback()
    assert [f.kind for f in fb] == ["thumb", "thumb", "stars", "best", "rank", "edit", "accept"]
    assert fb[1].value == -1.0 and fb[1].source == "ui"
    assert fb[4].ranking == [c, a, b]
    assert fb[5].edited_text == "a better sentence."
    assert all(f.policy_version == 1 and f.request_id == req.id and f.profile_id == "default" for f in fb)
    assert store.get_feedback(ids[2]).value == 5.0
    assert store.last_feedback_id() == ids[-1]
    assert [f.id for f in store.feedback(since_id=ids[4])] == ids[5:]
    by_kind = store.feedback_counts_by_kind()
    assert by_kind == {"thumb": 2, "stars": 1, "best": 1, "rank": 1, "edit": 1, "accept": 1}

    grouped = store.requests_with_feedback()
    assert len(grouped) == 1 and grouped[0]["request"].id == req.id
    assert len(grouped[0]["suggestions"]) == 3 and len(grouped[0]["feedback"]) == 7
    assert store.requests_with_feedback(since_id=ids[-1]) == []

    other = _request(store, n=2, version=1)
    store.add_feedback(other.suggestions[0].id, "thumb", 1)
    assert [f.id for f in store.feedback(request_id=req.id)] == ids
    assert [f.request_id for f in store.feedback("default", request_id=other.id)] == [other.id]
    assert store.feedback("someone-else", request_id=req.id) == []


def test_profile_status_counts_only_that_profile_and_names_its_own_versions(store, tmp_path):
    store.ensure_profile("other")
    mine, theirs = _request(store, n=2), _request(store, n=3, profile="other")
    store.add_feedback(mine.suggestions[0].id, "stars", 4)
    store.add_feedback(theirs.suggestions[0].id, "thumb", 1)
    store.add_feedback(theirs.suggestions[1].id, "thumb", -1)
    v = store.add_version(profile_id="other", kind="policy", path=tmp_path / "v", status="published")
    st = store.profile_status("default")
    assert st["profile"] == "default" and st["policy_version"] == 0 and st["reward_version"] == 0
    assert st["feedback_by_kind"]["stars"] == 1 and st["feedback_by_kind"]["thumb"] == 0
    assert st["profile_counts"]["suggestions"] == 2 and st["counts"]["suggestions"] == 5
    other = store.profile_status("other")
    assert other["policy_version"] == v.id and other["feedback_by_kind"]["thumb"] == 2
    assert other["profile_counts"]["feedback"] == 2 and other["counts"]["feedback"] == 3
    assert other["learner"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="like", value=1), "unknown feedback kind"),
        (dict(kind="stars", value=7), "stars"),
        (dict(kind="stars", value=2.5), "stars"),
        (dict(kind="stars", value=None), "stars"),
        (dict(kind="thumb", value=0), "thumb"),
        (dict(kind="edit", edited_text="   "), "edit"),
        (dict(kind="rank", ranking=None), "rank"),
        (dict(kind="thumb", value=1, source="telepathy"), "source"),
    ],
)
def test_bad_feedback_raises_and_writes_nothing(store, kwargs, message):
    req = _request(store)
    before = _counts(store)
    with pytest.raises(StoreError, match=message):
        store.add_feedback(req.suggestions[0].id, **kwargs)
    assert _counts(store) == before


def test_bad_ranking_and_unknown_suggestion_write_nothing(store):
    r1, r2 = _request(store), _request(store)
    a, b, _ = (s.id for s in r1.suggestions)
    foreign = r2.suggestions[0].id
    before = _counts(store)
    with pytest.raises(StoreError, match="not suggestions of request"):
        store.add_feedback(a, "rank", ranking=[a, foreign])
    with pytest.raises(StoreError, match="repeats"):
        store.add_feedback(a, "rank", ranking=[a, a])
    with pytest.raises(StoreError, match="must include"):
        store.add_feedback(a, "rank", ranking=[b, r1.suggestions[2].id])
    with pytest.raises(NotFound):
        store.add_feedback(10_000, "thumb", 1)
    assert _counts(store) == before


# ----------------------------------------------------------------------------- library, styles, embeddings
def test_library_styles_and_embedding_cache(store):
    v = np.array([0.6, 0.8, 0.0], dtype=np.float32)
    sid = store.add_snippet("default", "a lighthouse at dusk", v, "emb-a")
    store.add_snippet("default", "no vector yet", None, None, source="draft")
    snips = store.snippets("default")
    assert [s.text for s in snips] == ["a lighthouse at dusk", "no vector yet"]
    np.testing.assert_allclose(snips[0].embedding, v)
    assert snips[1].embedding is None and snips[1].source == "draft"
    store.set_snippet_embedding(snips[1].id, np.ones(3), "emb-b")
    assert store.snippets("default")[1].embedder == "emb-b"
    assert store.snippets("someone-else") == []
    assert sid == snips[0].id

    store.save_style("default", "noir", "hard-boiled, short sentences")
    store.save_style("default", "noir", "hard-boiled, rain, neon")  # redefine
    assert store.styles("default") == {"noir": "hard-boiled, rain, neon"}
    for name, desc in [("", "x"), ("n" * 41, "x"), ("ok", "  ")]:
        with pytest.raises(StoreError):
            store.save_style("default", name, desc)

    h1, h2 = text_hash("one"), text_hash("two")
    store.put_embeddings({h1: np.arange(4, dtype=np.float32), h2: np.ones(4)}, "emb-a")
    got = store.get_embeddings([h1, h2, text_hash("three"), h1], "emb-a")
    assert set(got) == {h1, h2}
    np.testing.assert_allclose(got[h1], [0, 1, 2, 3])
    assert store.get_embeddings([h1], "other-embedder") == {}


# ----------------------------------------------------------------------------- versions, metrics, learner
def test_versions_metrics_learner_state_and_events(store, tmp_path):
    assert store.live_version("default") is None
    v1 = store.add_version(profile_id="default", kind="policy", path=tmp_path / "v1", metrics={"rl/kl": 0.1},
                           status="published")
    v2 = store.add_version(profile_id="default", kind="policy", path=tmp_path / "v2", parent_id=v1.id,
                           config={"lr": 1e-4})
    assert store.live_version("default").id == v1.id  # v2 is only a candidate
    store.set_version_status(v2.id, "published")
    assert store.live_version("default").id == v2.id
    store.set_version_status(v2.id, "rolled_back")
    assert store.live_version("default").id == v1.id
    assert store.live_version("default", "reward") is None
    assert [v.id for v in store.versions("default", "policy")] == [v2.id, v1.id]
    assert store.get_version(v2.id).config == {"lr": 1e-4} and store.get_version(v2.id).parent_id == v1.id
    store.update_version_metrics(v1.id, {"rm/accuracy": 0.75})
    assert store.get_version(v1.id).metrics == {"rl/kl": 0.1, "rm/accuracy": 0.75}
    with pytest.raises(StoreError):
        store.add_version(profile_id="default", kind="critic", path="x")
    with pytest.raises(StoreError):
        store.set_version_status(v1.id, "great")
    with pytest.raises(NotFound):
        store.get_version(999)

    store.log_metrics(v1.id, {"rl/kl": 0.2, "note": "text is skipped"}, step=1)
    assert [(m["step"], m["value"]) for m in store.metric_series("rl/kl", v1.id)] == [(0, 0.1), (1, 0.2)]

    assert store.learner_state("default") is None
    st = store.set_learner_state("default", phase="reward", progress=0.5, metrics={"rm/loss": 0.3}, paused=False)
    assert st["phase"] == "reward" and st["metrics"] == {"rm/loss": 0.3} and st["paused"] is False
    store.set_learner_state("default", command="train_now")
    assert store.take_learner_command("default") == "train_now"
    assert store.take_learner_command("default") is None
    assert store.take_learner_command("nobody") is None
    with pytest.raises(StoreError):
        store.set_learner_state("default", colour="blue")

    eid = store.add_event("rollback", "reward dropped", version_id=v2.id, data={"delta": -0.2})
    ev = store.events("default", "rollback")
    assert ev[0]["id"] == eid and ev[0]["data"] == {"delta": -0.2} and ev[0]["reason"] == "reward dropped"


# ----------------------------------------------------------------------------- migrations
def test_migrations_are_idempotent(tmp_path):
    path = tmp_path / "m.db"
    s1 = Store(path)
    first = s1.schema_migrations()
    assert first == [name for name, _ in schema.MIGRATIONS]
    _request(s1)
    s1.close()
    s2 = Store(path)
    assert s2.schema_migrations() == first
    assert schema.migrate(s2.db) == []  # nothing left to apply
    assert s2.counts()["requests"] == 1
    s2.close()


def test_older_database_is_migrated_on_open(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(sqlite3.connect(str(path)))
    db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
    name, first = schema.MIGRATIONS[0]
    first(db)
    db["_migrations"].insert({"name": name, "applied_at": 0.0})
    db["profiles"].insert({"id": "old", "name": "old", "created_at": 0.0})
    db["requests"].insert({"id": 1, "profile_id": "old", "mode": "continue", "text": "old text", "options": "{}",
                           "prompt": "p", "policy_version": 0, "document_id": None, "created_at": 0.0})
    db["suggestions"].insert({"id": 1, "request_id": 1, "idx": 0, "text": "old suggestion", "policy_version": 0,
                              "created_at": 0.0})
    assert "styles" not in db.table_names() and "learner_state" not in db.table_names()
    db.conn.close()

    s = Store(path)
    assert s.schema_migrations() == [n for n, _ in schema.MIGRATIONS]
    assert {"styles", "learner_state", "embeddings", "metrics", "events"} <= set(s.db.table_names())
    assert s.get_request(1).suggestions[0].text == "old suggestion"  # old data kept
    s.add_feedback(1, "stars", 4)  # and usable with the new code
    s.save_style("old", "terse", "few words")
    assert s.feedback_counts_by_kind()["stars"] == 1
    s.close()


# ----------------------------------------------------------------------------- concurrency and restart
def test_concurrent_feedback_from_8_threads_loses_nothing(store):
    req = _request(store, n=4)
    ids = [s.id for s in req.suggestions]
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(50):
                store.add_feedback(ids[(t + i) % 4], "stars", 1 + (t + i) % 5, source="simulated")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    fb = store.feedback()
    assert len(fb) == 400 and len({f.id for f in fb}) == 400
    assert store.feedback_counts_by_kind()["stars"] == 400
    assert sum(f.value for f in fb) == sum(1 + (t + i) % 5 for t in range(8) for i in range(50))


def test_concurrent_writers_from_two_store_objects(tmp_path):
    """Two Store objects on one file (like the app and the learner process) interleave safely."""
    path = tmp_path / "shared.db"
    a, b = Store(path), Store(path)
    sid = _request(a).suggestions[0].id

    def rate(s: Store) -> None:
        for _ in range(30):
            s.add_feedback(sid, "thumb", 1)

    ts = [threading.Thread(target=rate, args=(s,)) for s in (a, b, a, b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(a.feedback()) == 120 == len(b.feedback())
    a.close()
    b.close()


def test_rating_survives_restart(tmp_path):
    path = tmp_path / "restart.db"
    s = Store(path)
    sid = _request(s).suggestions[1].id
    fid = s.add_feedback(sid, "stars", 4, source="ui")
    s.close()

    s2 = Store(path)
    f = s2.get_feedback(fid)
    assert (f.suggestion_id, f.kind, f.value, f.source) == (sid, "stars", 4.0, "ui")
    assert s2.get_suggestion(sid).text == "candidate 1"
    s2.close()
