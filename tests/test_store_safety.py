"""Store reliability: transactions, paths, connections, pruning, locks, bounded growth, bad ids."""

from __future__ import annotations

import pytest

from storage.store import Store


def _request(store: Store, n: int = 3, profile: str = "default", prompt: str = "<prompt>"):
    return store.record_request(profile_id=profile, mode="continue", text="t", options={}, prompt=prompt,
                                policy_version=0, suggestions=[f"c{i}" for i in range(n)])


# ----------------------------------------------------------------------------- sqlite-utils semantics
def test_a_failed_grouped_write_leaves_nothing(store):
    """What the pinned sqlite-utils must give: its inserts join our BEGIN IMMEDIATE transaction
    (sqlite-utils 3.x wrapped each insert in `with conn:`, which commits it on the spot)."""
    with pytest.raises(RuntimeError):
        with store.transaction():
            _request(store)
            _request(store)
            raise RuntimeError("crash in the middle")
    assert store.counts()["requests"] == 0 and store.counts()["suggestions"] == 0
    assert not store.db.conn.in_transaction
    _request(store)  # and the store still writes
    assert store.counts()["requests"] == 1


# ----------------------------------------------------------------------------- ids out of SQLite's range
@pytest.mark.parametrize("bad", [2**63, 2**64 + 5, -(2**63) - 1, "12x", None])
def test_ids_out_of_range_or_malformed_are_not_found(store, bad):
    from storage.store import NotFound

    req = _request(store)
    store.add_feedback(req.suggestions[0].id, "thumb", 1)
    for call in (store.get_request, store.get_suggestion, store.get_feedback, store.get_version,
                 store.get_document, lambda i: store.set_version_status(i, "published"),
                 lambda i: store.update_version_metrics(i, {"a": 1.0}),
                 lambda i: store.add_feedback(i, "thumb", 1), lambda i: store.set_snippet_embedding(i, [1.0], "e"),
                 *([lambda i: store.save_document("default", "x", document_id=i)] if bad is not None else [])):
        with pytest.raises(NotFound):
            call(bad)
    if isinstance(bad, int):  # list queries answer "nothing there", never OverflowError
        assert store.feedback(request_id=bad) == []
        assert store.feedback(since_id=bad) == ([] if bad > 0 else store.feedback())
        assert store.requests_with_feedback(since_id=bad) == ([] if bad > 0 else store.requests_with_feedback())
        assert store.metric_series("x", version_id=bad) == []
    assert store.counts()["feedback"] == 1


# ----------------------------------------------------------------------------- a constant number of queries
def _count_selects(store, fn):
    n = []
    store.db.conn.set_trace_callback(  # data queries (not sqlite-utils' own look-ups of sqlite_master)
        lambda sql: n.append(sql) if sql.lstrip().lower().startswith("select") and "sqlite_master" not in sql else None)
    try:
        out = fn()
    finally:
        store.db.conn.set_trace_callback(None)
    return out, len(n)


def test_requests_with_feedback_uses_a_constant_number_of_queries(store):
    def rate(k):
        for _ in range(k):
            r = _request(store, n=2)
            store.add_feedback(r.suggestions[0].id, "best")
    rate(2)
    few, q_few = _count_selects(store, store.requests_with_feedback)
    rate(30)
    many, q_many = _count_selects(store, store.requests_with_feedback)
    assert len(few) == 2 and len(many) == 32
    assert q_many == q_few <= 4
    g = many[-1]
    assert [s.idx for s in g["suggestions"]] == [0, 1] and g["request"].suggestions == g["suggestions"]
    assert [f.kind for f in g["feedback"]] == ["best"]
    recent, q_recent = _count_selects(store, lambda: store.recent_requests(limit=20))
    assert len(recent) == 20 and all(len(r.suggestions) == 2 for r in recent) and q_recent <= 2
