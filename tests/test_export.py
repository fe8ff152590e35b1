"""Exports: merged model reloads with plain transformers and matches the live policy's logits;
adapter/reward copies; exports for download stay inside <data_dir>/exports."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from assistant.app.export import (
    ExportError,
    export,
    export_to_exports_dir,
    export_zip_path,
    list_exports,
)
from storage.artifacts import exports_root, save_version
from tests.test_hotswap import lora_policy_writer


def _feedback(store, n=3):
    req = store.record_request(profile_id="default", mode="continue", text="t", options={}, prompt="p",
                               policy_version=0, suggestions=["a", "b"])
    for _ in range(n):
        store.add_feedback(req.suggestions[0].id, "thumb", 1.0)
    store.add_feedback(req.suggestions[1].id, "stars", 4)


def test_merged_export_matches_live_policy(store, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.app.cli.common import policy_source
    from assistant.lm.generate import Generator

    _feedback(store)
    v = save_version(store, tmp_path, kind="policy", profile_id="default", writer=lora_policy_writer(tiny_model_dir, 3),
                     metrics={"rl/kl": 0.02, "rm/accuracy": 0.8}, publish=True)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    gen = Generator(base, tok, version_source=policy_source(store))
    assert gen.refresh_policy() == v.id
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        live = gen.model(input_ids=ids).logits
        base_only = gen.model.get_base_model()  # sanity: the adapter changes the output
        with gen.model.disable_adapter():
            plain = base_only(input_ids=ids).logits
    assert not torch.allclose(live, plain, atol=1e-4)

    out = export(store, what="merged", out_dir=tmp_path / "merged", base_path=tiny_model_dir)
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    assert not (out / "adapter_config.json").exists()  # merged: a plain model, no peft needed
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, live, atol=1e-4, rtol=1e-4)
    assert AutoTokenizer.from_pretrained(str(out)).encode("The rain") == tok.encode("The rain")
    card = (out / "README.md").read_text()
    assert f"version {v.id}" in card and "rl/kl" in card and "| thumb | 3 |" in card and "| stars | 1 |" in card

    with pytest.raises(ExportError, match="not empty"):
        export(store, what="merged", out_dir=out, base_path=tiny_model_dir)


def test_adapter_and_reward_exports(store, tmp_path, tiny_model_dir):
    from peft import PeftConfig

    v = save_version(store, tmp_path, kind="policy", profile_id="default", writer=lora_policy_writer(tiny_model_dir, 4),
                     metrics={"rl/reward": 0.3}, publish=True)
    out = export(store, what="adapter", out_dir=tmp_path / "ad", version_id=v.id, base_path=tiny_model_dir)
    assert PeftConfig.from_pretrained(str(out / "adapter")).r == 4
    assert (out / "value_head.safetensors").exists()
    assert json.loads((out / "metrics.json").read_text()) == {"rl/reward": 0.3}

    with pytest.raises(ExportError, match="no published reward"):
        export(store, what="reward", out_dir=tmp_path / "rw")

    def rm_writer(d: Path) -> None:
        (d / "reward_config.json").write_text("{}")

    r = save_version(store, tmp_path, kind="reward", profile_id="default", writer=rm_writer, publish=True)
    out = export(store, what="reward", out_dir=tmp_path / "rw")
    assert (out / "reward_config.json").exists() and (out / "metrics.json").exists()
    with pytest.raises(ExportError, match="not a policy version"):
        export(store, what="adapter", out_dir=tmp_path / "x", version_id=r.id)
    with pytest.raises(ExportError, match="data directory"):  # --overwrite must never delete the store
        export(store, what="adapter", out_dir=store.path.parent, version_id=v.id, overwrite=True)
    assert store.path.exists() and Path(v.path).is_dir()
    with pytest.raises(ExportError, match="another profile"):
        export(store, what="adapter", out_dir=tmp_path / "z", version_id=v.id, profile_id="someone-else")
    assert not (tmp_path / "z").exists()
    with pytest.raises(ExportError, match="unknown export"):
        export(store, what="weights", out_dir=tmp_path / "y")


def test_exports_for_download_stay_in_exports_dir(store, tmp_path, tiny_model_dir):
    v = save_version(store, tmp_path, kind="policy", profile_id="default", writer=lora_policy_writer(tiny_model_dir, 5),
                     publish=True)
    res = export_to_exports_dir(store, tmp_path, what="adapter", version_id=v.id)
    root = exports_root(tmp_path).resolve()
    assert Path(res["zip"]).resolve().parent == root and Path(res["dir"]).resolve().parent == root
    with zipfile.ZipFile(res["zip"]) as z:
        assert "adapter/adapter_config.json" in z.namelist()
    name = Path(res["zip"]).name
    assert [e["name"] for e in list_exports(tmp_path)] == [name]
    assert export_zip_path(tmp_path, name) == Path(res["zip"]).resolve()
    for bad in ("../inkloop.db", "/etc/passwd", "..zip", "x/../../a.zip", name.replace(".zip", "")):
        with pytest.raises(ExportError):
            export_zip_path(tmp_path, bad)
    with pytest.raises(ExportError):
        export_to_exports_dir(store, tmp_path, what="adapter", version_id=-1)



def test_failed_download_export_leaves_nothing_behind(store, tmp_path, tiny_model_dir, monkeypatch):
    v = save_version(store, tmp_path, kind="policy", profile_id="default", writer=lora_policy_writer(tiny_model_dir, 2),
                     publish=True)

    def broken_archive(base_name, fmt, root_dir):
        Path(base_name + ".zip").write_bytes(b"PK half a zip")  # what a full disk leaves
        raise OSError("No space left on device")

    monkeypatch.setattr(shutil, "make_archive", broken_archive)
    with pytest.raises(OSError, match="No space"):
        export_to_exports_dir(store, tmp_path, what="adapter", version_id=v.id)
    assert list_exports(tmp_path) == [] and list(exports_root(tmp_path).iterdir()) == []


def test_feedback_export_writes_trl_datasets(store, tmp_path):
    req = store.record_request(profile_id="default", mode="continue", text="The rain", options={}, prompt="p",
                               policy_version=0, suggestions=["good one", "bad one", "meh"])
    a, b, c = req.suggestions
    store.add_feedback(a.id, "rank", ranking=[a.id, b.id, c.id])
    store.add_feedback(a.id, "stars", 5)
    store.add_feedback(b.id, "thumb", -1)
    out = export(store, what="feedback", out_dir=tmp_path / "fb")
    pref = [json.loads(x) for x in (out / "preference.jsonl").read_text().splitlines()]
    assert pref and {"prompt", "chosen", "rejected"} <= set(pref[0])
    assert any(p["chosen"] == "good one" and p["rejected"] == "bad one" for p in pref)
    ratings = [json.loads(x) for x in (out / "ratings.jsonl").read_text().splitlines()]
    assert ratings == [{"prompt": ratings[0]["prompt"], "completion": "good one", "rating": 5}]
    unpaired = [json.loads(x) for x in (out / "unpaired.jsonl").read_text().splitlines()]
    assert [(u["completion"], u["label"]) for u in unpaired] == [("bad one", False)]


def test_export_through_the_api_stays_in_exports_dir(store, tmp_path, tiny_model_dir):
    """POST /export writes only under <data_dir>/exports; the zip downloads; no path can be chosen."""
    import io

    from fastapi.testclient import TestClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.app.cli.common import policy_source
    from assistant.app.cli.serve import build_app
    from assistant.app.services import Services
    from assistant.lm.generate import Generator

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    services = Services(store, Generator(model, tok, version_source=policy_source(store)), None, "tiny")
    client = TestClient(build_app(services, with_ui=False))
    data_dir = store.path.parent

    r = client.post("/api/v1/export", json={"what": "merged"})
    assert r.status_code == 400 and "no published policy" in r.json()["error"]
    v = save_version(store, data_dir, kind="policy", profile_id="default",
                     writer=lora_policy_writer(tiny_model_dir, 6), publish=True)
    r = client.post("/api/v1/export", json={"what": "merged", "version": v.id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["download"] == f"/api/v1/exports/{body['name']}"
    dl = client.get(body["download"])
    assert dl.status_code == 200 and dl.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(dl.content)) as z:
        assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= set(z.namelist())
    assert [e["name"] for e in client.get("/api/v1/exports").json()["exports"]] == [body["name"]]
    assert all(p.resolve().parent == exports_root(data_dir).resolve() for p in exports_root(data_dir).iterdir())

    # no caller-chosen paths: extra fields are refused, traversal names are not served
    r = client.post("/api/v1/export", json={"what": "adapter", "out": str(tmp_path / "elsewhere")})
    assert r.status_code == 422 and not (tmp_path / "elsewhere").exists()
    for bad in ("..%2Finkloop.db", "%2E%2E%2Finkloop.db", "inkloop.db", "x.zip"):
        assert client.get(f"/api/v1/exports/{bad}").status_code == 404
    assert client.post("/api/v1/export", json={"what": "weights"}).status_code == 422
