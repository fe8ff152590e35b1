"""The library: pure ranking on hand-made vectors, and the real MiniLM embedder end to end."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.lm.library import (
    MAX_SNIPPET_CHARS,
    Library,
    embed_texts,
    rank_by_similarity,
)


def test_rank_by_similarity_by_hand():
    q = np.array([1.0, 0.0], dtype=np.float32)
    m = np.array([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    order, scores = rank_by_similarity(q, m)
    assert order.tolist() == [2, 1, 0, 3]
    np.testing.assert_allclose(scores, [1.0, 0.6, 0.0, -1.0])
    # ties keep insertion order (stable sort)
    order, _ = rank_by_similarity(q, np.array([[0.5, 0.5], [0.5, -0.5]], dtype=np.float32))
    assert order.tolist() == [0, 1]
    order, scores = rank_by_similarity(q, np.zeros((0, 2), dtype=np.float32))
    assert order.size == 0 and scores.size == 0


def test_embed_texts_is_normalised(embedder):
    v = embed_texts(embedder, ["a lighthouse", "a tax form", "a lighthouse"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v[0], v[2], atol=1e-6)
    assert embed_texts(embedder, []).shape == (0, 0)


def test_add_and_search_by_meaning(store, embedder):
    lib = Library(store, embedder)
    ids = [lib.add("default", t) for t in (
        "The old lighthouse keeper lit the lamp as the storm came in from the sea.",
        "Mix flour, butter and sugar, then bake the cake for forty minutes.",
        "The quarterly report shows revenue grew by four percent.",
    )]
    hits = lib.search("default", "waves crashing against a lighthouse in bad weather", top_k=3)
    assert [h.snippet.id for h in hits][0] == ids[0]
    assert hits[0].score > hits[1].score >= hits[2].score
    assert lib.search("default", "baking a dessert", top_k=1)[0].snippet.id == ids[1]
    assert len(lib.search("default", "anything", top_k=2)) == 2
    assert lib.search("default", "   ") == []
    assert lib.search("another-profile", "lighthouse") == []  # profiles do not see each other's notes


def test_snippets_without_vectors_are_embedded_once(store, embedder):
    sid = store.add_snippet("default", "A fox jumps over a sleeping dog in the yard.", None, None)
    lib = Library(store, embedder, embedder_name="all-MiniLM-L6-v2")
    hits = lib.search("default", "a fox and a dog")
    assert hits[0].snippet.id == sid and hits[0].score > 0.5
    stored = store.snippets("default")[0]
    assert stored.embedder == "all-MiniLM-L6-v2" and stored.embedding.shape == (384,)


def test_bad_snippets_are_refused_and_nothing_written(store, embedder):
    lib = Library(store, embedder)
    for text in ("", "   ", "x" * (MAX_SNIPPET_CHARS + 1)):
        with pytest.raises(ValueError):
            lib.add("default", text)
    assert store.counts()["library"] == 0
