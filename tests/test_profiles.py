"""Every profile learns its own taste (issue 15, item 2): the generator serves each request with its
own profile's live adapter and records that version."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from assistant.lm.config import GenerationSettings
from assistant.lm.prompts import build_prompt
from storage.artifacts import save_version
from tests.test_hotswap import lora_policy_writer

TEXT = "The rain had not stopped."
IDS = torch.tensor([[5, 17, 42, 9, 33, 60]])
GREEDY = GenerationSettings(k=1, temperature=0.0, max_new_tokens=8, repetition_penalty=1.3)


def _tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.lm.models import prepare_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prepare_tokenizer(tok)
    return model, tok


def _services(store, tiny_model_dir, embedder=None, **gen_kw):
    """Services over a Generator composed as `build_services` composes it (policy_source)."""
    from assistant.app.cli.common import policy_source
    from assistant.app.services import Services
    from assistant.lm.generate import Generator
    from assistant.lm.library import Library

    model, tok = _tiny(tiny_model_dir)
    box = {}
    gen = Generator(model, tok, version_source=policy_source(store, lambda: box["g"].failed_versions), **gen_kw)
    box["g"] = gen
    return Services(store, gen, Library(store, embedder) if embedder is not None else None, model_name="tiny",
                    embedder=embedder)


def _publish(store, tmp_path, tiny_model_dir, profile, seed, parent=None):
    return save_version(store, tmp_path, kind="policy", profile_id=profile, publish=True, parent_id=parent,
                        writer=lora_policy_writer(tiny_model_dir, seed=seed, scale=2.0))


def _logits(gen) -> torch.Tensor:
    with torch.no_grad():
        return gen.model(input_ids=IDS).logits.float()


def _two_profiles(store, tmp_path, tiny_model_dir):
    """Services on the tiny model, the base model's logits, and a published version each for a and b."""
    svc = _services(store, tiny_model_dir)
    base_logits = _logits(svc.generator)
    return (svc, base_logits, _publish(store, tmp_path, tiny_model_dir, "a", seed=1),
            _publish(store, tmp_path, tiny_model_dir, "b", seed=2))


def _greedy(gen, profile):
    r = gen.suggest(build_prompt("continue", TEXT), TEXT, GREEDY, profile=profile)
    return r.policy_version, r.raw


# ----------------------------------------------------------------------------- the generator
def test_two_profiles_are_served_their_own_adapters_and_record_their_versions(store, tmp_path, tiny_model_dir):
    from assistant.app.services import SuggestRequest
    from assistant.lm.generate import Generator

    svc, base_logits, va, vb = _two_profiles(store, tmp_path, tiny_model_dir)
    gen = svc.generator
    c0, a1, b1, a2, c1 = (_greedy(gen, p) for p in ("c", "a", "b", "a", "c"))  # c has no policy: the base
    assert [x[0] for x in (c0, a1, b1, a2, c1)] == [0, va.id, vb.id, va.id, 0]
    assert a1[1] == a2[1]  # A after B writes A's text again
    assert len({tuple(c0[1]), tuple(a1[1]), tuple(b1[1])}) == 3 and c1[1] == c0[1]

    # the weights are exactly A's (as a generator that only ever loaded A has them), B's, the base's
    gen.refresh_policy("a")
    la = _logits(gen)
    only_a = Generator(_tiny(tiny_model_dir)[0], gen.tokenizer, version_source=lambda p: (va.id, va.path))
    only_a.refresh_policy("anyone")
    torch.testing.assert_close(la, _logits(only_a))
    gen.refresh_policy("b")
    assert not torch.allclose(_logits(gen), la, atol=1e-4)
    gen.refresh_policy("c")
    assert torch.equal(_logits(gen), base_logits)  # the adapter filled with zeros is the base model exactly
    assert len(gen.model.peft_config) == 1  # one adapter, its weights swapped per profile

    # what the store records: each request with the version that served it, under its profile
    for profile, v in (("a", va), ("b", vb), ("a", va), ("c", None)):
        res = svc.suggest(SuggestRequest(mode="continue", text=TEXT, k=2, max_new_tokens=6, seed=1, profile=profile))
        rec = store.get_request(res.request_id)
        want = v.id if v else 0
        assert res.policy_version == rec.policy_version == want and rec.profile_id == profile
        assert all(s.policy_version == want for s in rec.suggestions)
    assert [svc.status(p)["loaded_policy_version"] for p in ("a", "b", "c")] == [va.id, vb.id, 0]
    assert [svc.status(p)["policy_version"] for p in ("a", "b", "c")] == [va.id, vb.id, 0]


def test_switching_back_and_forth_reads_the_adapters_from_memory(store, tmp_path, tiny_model_dir, monkeypatch):
    from assistant.lm import adapters

    reads = []
    real = adapters.read_weights

    def counted(directory, device):
        reads.append(Path(directory).parent.name)
        return real(directory, device)

    monkeypatch.setattr(adapters, "read_weights", counted)
    va = _publish(store, tmp_path, tiny_model_dir, "a", seed=1)
    vb = _publish(store, tmp_path, tiny_model_dir, "b", seed=2)
    sizes = {}
    for size in (8, 1):
        gen = _services(store, tiny_model_dir, adapter_cache=size).generator
        reads.clear()
        texts = [_greedy(gen, p) for p in ("a", "b", "a", "b", "a")]
        assert [t[0] for t in texts] == [va.id, vb.id, va.id, vb.id, va.id]
        assert texts[0] == texts[2] == texts[4] and texts[1] == texts[3]
        sizes[size] = len(reads)
    assert sizes == {8: 2, 1: 5}  # each version read once; with room for one, at every switch
    # with both in memory, a switch needs no file at all
    gen = _services(store, tiny_model_dir).generator
    before = [_greedy(gen, p) for p in ("a", "b")]
    for v in (va, vb):
        (Path(v.path) / "adapter" / "adapter_model.safetensors").unlink()
    assert [_greedy(gen, p) for p in ("a", "b", "a")] == [before[0], before[1], before[0]]


def test_an_unloadable_version_never_serves_another_profiles_adapter(store, tmp_path, tiny_model_dir):
    svc, base_logits, va, vb1 = _two_profiles(store, tmp_path, tiny_model_dir)
    gen = svc.generator
    assert gen.refresh_policy("b") == vb1.id
    lb1 = _logits(gen)
    assert gen.refresh_policy("a") == va.id
    vb2 = _publish(store, tmp_path, tiny_model_dir, "b", seed=3, parent=vb1.id)
    (Path(vb2.path) / "adapter" / "adapter_model.safetensors").write_bytes(b"damaged" * 10)
    assert gen.refresh_policy("b") == vb1.id  # B's last loadable version, not A's loaded adapter
    torch.testing.assert_close(_logits(gen), lb1)
    (ev,) = store.events("b", "policy_load_failed")
    assert ev["version_id"] == vb2.id and f"generating with version {vb1.id}" in ev["reason"]
    assert store.events("a", "policy_load_failed") == []
    assert "could not be loaded" in svc.status("b")["policy_error"] and svc.status("a")["policy_error"] is None

    # a profile whose only version is unloadable gets the base model, whoever was served before
    vd = _publish(store, tmp_path, tiny_model_dir, "d", seed=4)
    (Path(vd.path) / "adapter" / "adapter_model.safetensors").write_bytes(b"damaged" * 10)
    assert gen.refresh_policy("a") == va.id
    assert gen.refresh_policy("d") == 0
    assert torch.equal(_logits(gen), base_logits)
    assert gen.refresh_policy("a") == va.id  # and A comes back from memory


def test_profile_switches_keep_the_compiled_graphs(tiny_lm, tmp_path):
    """On the fast path a switch between profiles (and to a profile on the base model) copies
    weights in place: no recompilation, and each profile gets its own text back."""
    from torch._dynamo.utils import counters

    from assistant.lm.decode import DecodeSettings, model_key
    from assistant.lm.generate import Generator
    from tests.test_decode import _save_adapter

    model, tok = tiny_lm
    live = {"a": (1, _save_adapter(tmp_path, "v1", seed=1)), "b": (2, _save_adapter(tmp_path, "v2", seed=2))}
    g = Generator(model, tok, version_source=live.get)
    fd = g.start_fast_path(DecodeSettings(backend="eager", warmup=((4, 256),)))
    gen = GenerationSettings(k=3, temperature=0.0, max_new_tokens=10, repetition_penalty=1.3)
    p = build_prompt("continue", TEXT)
    g.suggest(p, "", gen, profile="a")  # the first adapter: a new structure, compiled in the background
    assert fd.wait_ready(model_key(g.model), 4, 256, timeout=120)
    key, graphs = model_key(g.model), counters["stats"]["unique_graphs"]
    out = {prof: g.suggest(p, "", gen, profile=prof) for prof in ("a", "b", "c")}
    again = {prof: g.suggest(p, "", gen, profile=prof) for prof in ("c", "b", "a")}
    assert model_key(g.model) == key and counters["stats"]["unique_graphs"] == graphs
    assert {k: v.policy_version for k, v in out.items()} == {"a": 1, "b": 2, "c": 0}
    assert all(again[k].raw == out[k].raw for k in out) and out["a"].raw != out["b"].raw != out["c"].raw
