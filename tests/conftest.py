"""Shared fixtures: a tiny random causal LM with an in-process tokenizer, a temporary store,
and (session-scoped, loaded once) the real bundled models for integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def store(tmp_path):
    from storage.store import Store

    s = Store(tmp_path / "inkloop.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from assistant.lm.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def tiny_lm(tiny_tokenizer):
    """(model, tokenizer): a fresh 2-layer Llama, hidden 32, random weights."""
    from assistant.lm.tiny import build_tiny_lm

    return build_tiny_lm(seed=0, tokenizer=tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny model saved as a Hugging Face directory (for --model PATH)."""
    from assistant.lm.tiny import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def embedder():
    """The real bundled MiniLM embedder (22M parameters; loads in about a second)."""
    from assistant.lm.config import ModelSettings
    from assistant.lm.models import load_embedder

    return load_embedder(ModelSettings(device="cpu"))


@pytest.fixture(scope="session")
def real_lm():
    """The real bundled SmolLM2-135M-Instruct (converted once, then cached)."""
    from assistant.lm.config import ModelSettings
    from assistant.lm.models import load_lm

    return load_lm(ModelSettings(device="cpu"))


@pytest.fixture
def tiny_services(tiny_lm, store, embedder):
    from assistant.app.services import Services
    from assistant.lm.generate import Generator
    from assistant.lm.library import Library

    model, tok = tiny_lm
    gen = Generator(model, tok, version_source=None)
    return Services(store, gen, Library(store, embedder), model_name="tiny")
