"""The real bundled SmolLM2-135M-Instruct through Services: every mode gives K distinct, non-empty,
recorded suggestions (short generations to keep this quick)."""

from __future__ import annotations

import pytest

from assistant.app.services import Services, SuggestRequest
from assistant.lm.generate import Generator, dedupe
from assistant.lm.library import Library

pytestmark = pytest.mark.integration


@pytest.fixture
def real_services(real_lm, embedder, store):
    gen = Generator(real_lm.model, real_lm.tokenizer, version_source=None, device=real_lm.device)
    return Services(store, gen, Library(store, embedder), model_name=real_lm.name)


CASES = [
    SuggestRequest(mode="continue", text="The rain had not stopped for three days.", k=3, max_new_tokens=32, seed=1),
    SuggestRequest(mode="restyle", text="I am really tired and I want to go home now.", style="formal", k=3,
                   max_new_tokens=32, seed=1),
    SuggestRequest(mode="inspire", text="", keywords="lighthouse, storm", inspire_kind="openings", k=3,
                   max_new_tokens=32, seed=1),
]


@pytest.mark.parametrize("req", CASES, ids=[c.mode for c in CASES])
def test_every_mode_gives_three_distinct_suggestions(real_services, req):
    res = real_services.suggest(req)
    texts = [s["text"] for s in res.suggestions]
    assert len(texts) == 3, texts
    assert all(len(t.strip()) >= 3 for t in texts), texts
    assert dedupe(texts) == texts  # distinct up to case, spacing and punctuation
    if req.mode == "continue":
        assert not any(t.startswith(req.text) for t in texts)  # no echo of the draft
    if req.mode == "restyle":
        assert all(t.strip() != req.text for t in texts)
    stored = real_services.store.get_request(res.request_id)
    assert [s.text for s in stored.suggestions] == texts
    assert stored.prompt.startswith("<|im_start|>system")
