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
