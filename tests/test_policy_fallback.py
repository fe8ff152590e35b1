"""A live policy version that cannot load must not stop generation (issue 17, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from storage.artifacts import save_version
from tests.test_hotswap import lora_policy_writer, services_on_dir  # noqa: F401 - fixture


def _corrupt(version_dir: str | Path) -> None:
    f = Path(version_dir) / "adapter" / "adapter_model.safetensors"
    f.write_bytes(b"not a safetensors file" * 10)


def _req():
    from assistant.app.services import SuggestRequest

    return SuggestRequest(mode="continue", text="The rain had not stopped.", k=2, max_new_tokens=6, seed=1)


@pytest.mark.parametrize("damage", ["corrupt", "missing", "corrupt-unchecked"])
def test_unloadable_first_version_falls_back_to_base_and_records_an_event(
        store, tmp_path, tiny_model_dir, services_on_dir, damage, monkeypatch):  # noqa: F811
    svc = services_on_dir
    if damage == "corrupt-unchecked":  # the safety net: peft fails mid-injection
        from assistant.lm import adapters

        monkeypatch.setattr(adapters, "check_readable", lambda d: None)
    ids = torch.tensor([[5, 17, 42, 9, 33]])
    with torch.no_grad():
        base_logits = svc.generator.model(input_ids=ids).logits
    v1 = save_version(store, tmp_path, kind="policy", profile_id="default",
                      writer=lora_policy_writer(tiny_model_dir, seed=1), publish=True)
    if damage.startswith("corrupt"):
        _corrupt(v1.path)
    else:
        import shutil

        shutil.rmtree(Path(v1.path) / "adapter")
    out = svc.suggest(_req())
    assert out.policy_version == 0 and out.suggestions  # still generating, with the base model
    with torch.no_grad():
        torch.testing.assert_close(svc.generator.model(input_ids=ids).logits, base_logits)
    assert not any("lora" in n for n, _ in svc.generator.model.named_modules())  # nothing half-injected
    events = store.events("default", "policy_load_failed")
    assert len(events) == 1 and events[0]["version_id"] == v1.id and "base model" in events[0]["reason"]
    assert str(tmp_path) not in events[0]["reason"]  # no absolute path in what the UI shows
    svc.suggest(_req())
    assert len(store.events("default", "policy_load_failed")) == 1  # reported once, not per request
    st = svc.status()
    assert st["policy_version"] == v1.id and st["loaded_policy_version"] == 0
    assert "could not be loaded" in (st.get("policy_error") or "")
    from assistant.app.ui.handlers import header_text

    assert f"policy version {v1.id} could not be loaded" in header_text(svc)  # the UI's status line says so


def test_unloadable_new_version_keeps_the_last_loadable_one(store, tmp_path, tiny_model_dir, services_on_dir):  # noqa: F811
    svc = services_on_dir
    v1 = save_version(store, tmp_path, kind="policy", profile_id="default",
                      writer=lora_policy_writer(tiny_model_dir, seed=1), publish=True)
    assert svc.suggest(_req()).policy_version == v1.id
    ids = torch.tensor([[5, 17, 42, 9, 33]])
    with torch.no_grad():
        l1 = svc.generator.model(input_ids=ids).logits
    v2 = save_version(store, tmp_path, kind="policy", profile_id="default",
                      writer=lora_policy_writer(tiny_model_dir, seed=2), publish=True, parent_id=v1.id)
    _corrupt(v2.path)
    out = svc.suggest(_req())
    assert out.policy_version == v1.id and out.suggestions
    with torch.no_grad():
        torch.testing.assert_close(svc.generator.model(input_ids=ids).logits, l1)
    assert list(svc.generator.model.peft_config) == [f"v{v1.id}"]  # no half-loaded adapter left behind
    (ev,) = store.events("default", "policy_load_failed")
    assert ev["version_id"] == v2.id and f"version {v1.id}" in ev["reason"]
    # a newer good version is picked up again
    v3 = save_version(store, tmp_path, kind="policy", profile_id="default",
                      writer=lora_policy_writer(tiny_model_dir, seed=3), publish=True, parent_id=v2.id)
    assert svc.suggest(_req()).policy_version == v3.id
    assert svc.status().get("policy_error") is None


def test_at_start_an_unloadable_live_version_falls_back_to_the_newest_loadable_one(store, tmp_path, tiny_model_dir):
    """A fresh generator (the server restarted) whose live version is broken serves the newest
    published version that loads, not the base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.app.cli.common import policy_source
    from assistant.app.services import Services
    from assistant.lm.generate import Generator
    from assistant.lm.models import prepare_tokenizer

    v1 = save_version(store, tmp_path, kind="policy", profile_id="default",
                      writer=lora_policy_writer(tiny_model_dir, seed=1), publish=True)
    v2 = save_version(store, tmp_path, kind="policy", profile_id="default",
                      writer=lora_policy_writer(tiny_model_dir, seed=2), publish=True, parent_id=v1.id)
    _corrupt(v2.path)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prepare_tokenizer(tok)
    box = {}
    gen = Generator(model, tok, version_source=policy_source(store, lambda: box["g"].failed_versions))
    box["g"] = gen
    svc = Services(store, gen, None, model_name="tiny")
    assert svc.suggest(_req()).policy_version == v1.id
    (ev,) = store.events("default", "policy_load_failed")
    assert ev["version_id"] == v2.id and f"generating with version {v1.id}" in ev["reason"]
    assert f"version {v2.id} could not be loaded" in svc.status()["policy_error"]
    assert svc.suggest(_req()).policy_version == v1.id
    assert len(store.events("default", "policy_load_failed")) == 1
