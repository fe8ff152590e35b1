"""Hot-swapping published policy versions into the running Generator, and rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from storage.artifacts import rollback, save_version


def lora_policy_writer(model_dir: Path, seed: int, scale: float = 0.5):
    """A writer for save_version: reward.policy.Policy (LoRA + value head) on the tiny model with its
    LoRA B matrices set to random non-zero values (a fresh adapter equals the base), saved with
    Policy.save in the policy directory layout (adapter/ + value_head.safetensors)."""

    def write(d: Path) -> None:
        from transformers import AutoModelForCausalLM

        from assistant.lm.config import LoraSettings
        from reward.rl.policy import Policy

        base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        pol = Policy.from_base(base, None, LoraSettings(r=4, alpha=8))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in pol.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * scale)
            pol.value_head.weight.copy_(torch.randn(pol.value_head.weight.shape, generator=g))
        pol.save(d)

    return write


def _logits(gen, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return gen.model(input_ids=ids).logits.float()


@pytest.fixture
def services_on_dir(store, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.app.cli.common import policy_source
    from assistant.app.services import Services
    from assistant.lm.generate import Generator
    from assistant.lm.models import prepare_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prepare_tokenizer(tok)
    gen = Generator(model, tok, version_source=policy_source(store))
    return Services(store, gen, None, model_name="tiny")


def test_publish_hot_swaps_and_rollback_restores_logits(store, tmp_path, tiny_model_dir, services_on_dir):
    from assistant.app.services import SuggestRequest

    svc = services_on_dir
    gen = svc.generator
    ids = torch.tensor([[5, 17, 42, 9, 33, 60]])
    base_logits = _logits(gen, ids)
    req = SuggestRequest(mode="continue", text="The rain had not stopped.", k=2, max_new_tokens=6, seed=1)
    assert svc.suggest(req).policy_version == 0

    v1 = save_version(store, tmp_path, kind="policy", profile_id="default",
                      writer=lora_policy_writer(tiny_model_dir, seed=1), publish=True)
    r1 = svc.suggest(req)
    assert r1.policy_version == v1.id
    assert store.get_request(r1.request_id).suggestions[0].policy_version == v1.id
    l1 = _logits(gen, ids)
    assert not torch.allclose(l1, base_logits, atol=1e-4)

    v2 = save_version(store, tmp_path, kind="policy", profile_id="default",
                      writer=lora_policy_writer(tiny_model_dir, seed=2), publish=True, parent_id=v1.id)
    assert svc.suggest(req).policy_version == v2.id
    l2 = _logits(gen, ids)
    assert not torch.allclose(l2, l1, atol=1e-4)
    assert len(gen.model.peft_config) == 1  # v2's weights were copied into v1's modules, not stacked

    rollback(store, "default")  # v2 -> rolled_back; v1 is live again
    assert svc.suggest(req).policy_version == v1.id
    torch.testing.assert_close(_logits(gen, ids), l1, atol=1e-5, rtol=1e-5)
    assert svc.status()["policy_version"] == v1.id

    rollback(store, "default", 0)  # back to the base model
    assert svc.suggest(req).policy_version == 0
    torch.testing.assert_close(_logits(gen, ids), base_logits, atol=1e-5, rtol=1e-5)
