"""The person's own library: snippets saved from drafts or pasted, embedded once with the
sentence-transformers embedder and searched by cosine similarity for inspire-mode "material"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.records import Snippet
from storage.store import Store

MAX_SNIPPET_CHARS = 5_000


@dataclass
class Match:
    snippet: Snippet
    score: float


def embed_texts(embedder, texts: list[str]) -> np.ndarray:
    """L2-normalised float32 embeddings, shape (len(texts), dim)."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    v = embedder.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(v, dtype=np.float32)


def rank_by_similarity(query: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pure: indices of rows of `matrix` by descending cosine similarity to `query`, and the scores.
    Both inputs are expected L2-normalised."""
    if matrix.size == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=np.float32)
    scores = matrix @ query
    order = np.argsort(-scores, kind="stable")
    return order, scores[order]


class Library:
    def __init__(self, store: Store, embedder, embedder_name: str = "all-MiniLM-L6-v2"):
        self.store, self.embedder, self.embedder_name = store, embedder, embedder_name

    def add(self, profile_id: str, text: str, source: str = "pasted") -> int:
        text = (text or "").strip()
        if not text:
            raise ValueError("a snippet needs some text")
        if len(text) > MAX_SNIPPET_CHARS:
            raise ValueError(f"a snippet is limited to {MAX_SNIPPET_CHARS} characters")
        vec = embed_texts(self.embedder, [text])[0]
        return self.store.add_snippet(profile_id, text, vec, self.embedder_name, source=source)

    def search(self, profile_id: str, query: str, top_k: int = 5) -> list[Match]:
        snippets = self.store.snippets(profile_id)
        if not snippets or not (query or "").strip():
            return []
        # (re-)embed snippets stored without a vector or with another embedder
        stale = [s for s in snippets if s.embedding is None or s.embedder != self.embedder_name]
        if stale:
            vecs = embed_texts(self.embedder, [s.text for s in stale])
            for s, v in zip(stale, vecs):
                self.store.set_snippet_embedding(s.id, v, self.embedder_name)
                s.embedding = v
        matrix = np.stack([s.embedding for s in snippets])
        q = embed_texts(self.embedder, [query])[0]
        order, scores = rank_by_similarity(q, matrix)
        return [Match(snippets[i], float(sc)) for i, sc in zip(order[:top_k], scores[:top_k])]
