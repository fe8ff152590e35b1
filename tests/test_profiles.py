"""Every profile learns its own taste (issue 15, item 2): the generator serves each request with its
own profile's live adapter and records that version; one learner process runs every profile's
cycles in turn, under each profile's lock, with per-profile commands; a profile's ratings never
change another profile's reward model or policy; the UI, the API and the status follow the
chosen profile."""

from __future__ import annotations

import hashlib
import time
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


def test_the_servers_hold_holds_the_learner_whatever_profile_it_generates_for(store, tmp_path, tiny_model_dir):
    from storage.locks import Hold

    svc = _services(store, tiny_model_dir)
    svc.generator.busy = Hold(tmp_path).holding  # as `inkloop serve` composes it (LearnerSupervisor.busy)
    _publish(store, tmp_path, tiny_model_dir, "a", seed=1)
    learner_side = Hold(tmp_path, max_wait_s=0.3)  # what any learner of this data dir waits on
    waited = {}
    for profile in ("a", "b"):
        def during(_partial, profile=profile):
            waited.setdefault(profile, learner_side.wait())

        svc.generator.suggest(build_prompt("continue", TEXT), TEXT, GenerationSettings(k=1, max_new_tokens=4),
                              on_update=during, profile=profile)
    assert waited["a"] >= 0.3 and waited["b"] >= 0.3  # held while generating for either profile
    assert learner_side.wait() < 0.1  # and free once it is done


# ----------------------------------------------------------------------------- the all-profiles learner
def _rate(store, profile, good_is_long: bool, n: int = 6) -> None:
    """One continue request per text with a long and a short reply; the profile's taste picks one."""
    from tests.test_learner import TEXTS

    for i, t in enumerate(TEXTS[:n]):
        long, short = f"a long and complete reply about it, number {i}.", f"no {i}"
        req = store.record_request(profile_id=profile, mode="continue", text=t, options={},
                                   prompt=f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n",
                                   policy_version=0, suggestions=[long, short])
        store.add_feedback(req.suggestions[0].id, "thumb", 1 if good_is_long else -1)
        store.add_feedback(req.suggestions[1].id, "thumb", -1 if good_is_long else 1)


def _make_learner(store, tmp_path, tiny_model_dir, embedder, **cfg_kw):
    import copy

    from reward.loop.config import LearnerConfig
    from reward.loop.learner import Learner
    from reward.rl.config import RLConfig

    base, tok = _tiny(tiny_model_dir)
    base.requires_grad_(False)
    # the publish gate off: on the tiny model a step rarely beats its parent, and these tests are
    # about which profile's learner runs and what it writes (the gate has its own test)
    cfg = LearnerConfig(**{"min_new_feedback": 1, "rl_steps": 1, "eval_prompts": 2, "eval_samples": 1,
                           "eval_max_new_tokens": 6, "agreement_drop": 1.0, "max_length_corr": 1.01, "max_kl": 1e6,
                           "threads": 1, "nice": 0, "publish_requires_gain": False, "min_win_rate": 0.0, **cfg_kw},
                        rl=RLConfig(algo="reinforce", k=2, prompts_per_step=2, max_new_tokens=6, seed=0))
    built = []

    def make(profile):
        built.append(profile)  # one shared base: each profile's RL and evaluation copy it
        return Learner(store, tmp_path, profile, lambda: (copy.deepcopy(base), tok), embedder, cfg)

    return make, built


def _snapshot(store, profile) -> dict:
    """Everything of a profile the learner writes: version rows, their files, live ids, learner metrics."""
    files = {}
    for v in store.versions(profile):
        for f in sorted(Path(v.path).rglob("*")) if Path(v.path).exists() else []:
            if f.is_file():
                files[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    live = {k: getattr(store.live_version(profile, k), "id", None) for k in ("policy", "reward")}
    rows = [(v.id, v.kind, v.status, v.parent_id, sorted(v.metrics.items())) for v in store.versions(profile)]
    return {"rows": rows, "files": files, "live": live,
            "metrics": (store.learner_state(profile) or {}).get("metrics")}


def test_one_learner_runs_every_profile_oldest_first_honours_pause_and_keeps_them_apart(
        store, tmp_path, tiny_model_dir, embedder):
    from assistant.lm.config import MAX_K
    from reward.feedback import context_of
    from reward.loop.learner import send_command
    from reward.loop.profiles import ProfileLearners
    from reward.select import member_scores
    from reward.train import load_live_reward_model

    store.ensure_profile("a")  # a is the older profile, b's feedback the older
    _rate(store, "b", good_is_long=True)
    _rate(store, "a", good_is_long=False)  # a likes them short
    make, built = _make_learner(store, tmp_path, tiny_model_dir, embedder)
    loop = ProfileLearners(store, tmp_path, make, poll_s=0.1, beat_s=0.0)
    assert loop.order() == ["b", "a"]
    send_command(store, "a", "pause")
    assert loop.order() == ["a", "b"]  # a queued command comes first

    turns = loop.run_pass(until_cycle=True)
    assert [(t.profile, t.outcome) for t in turns] == [("a", "skipped"), ("b", "published")]
    assert turns[0].reason == "paused" and store.learner_state("a")["phase"] == "paused"
    assert store.versions("a") == []
    b_version = turns[1].result.version_id

    turns = loop.run_pass()  # a is still paused, b has nothing new
    assert (turns[0].profile, turns[0].outcome, turns[0].reason) == ("a", "skipped", "paused")
    assert turns[1].outcome == "skipped" and "0 new" in turns[1].reason
    b_after = _snapshot(store, "b")
    assert b_after["live"]["policy"] == b_version and b_after["live"]["reward"]
    b_state = store.learner_state("b")
    send_command(store, "a", "resume")
    (turn,) = loop.run_pass(until_cycle=True)
    assert (turn.profile, turn.outcome) == ("a", "published"), turn.reason
    # during a's cycle b's heartbeat was renewed, nothing else of its state changed
    b_now = store.learner_state("b")
    assert b_now["heartbeat"] > b_state["heartbeat"]
    assert {k: v for k, v in b_now.items() if k not in ("heartbeat", "updated_at")} == \
        {k: v for k, v in b_state.items() if k not in ("heartbeat", "updated_at")}
    assert built == ["a", "b"]  # one Learner per profile, kept across turns

    # a's cycle changed nothing of b's; a learnt from the base model and from its own ratings only
    assert _snapshot(store, "b") == b_after
    a_live = store.live_version("a", "policy")
    assert a_live.parent_id is None and a_live.profile_id == "a"
    assert store.learner_state("a")["metrics"]["learner/last_feedback_id"] == store.last_feedback_id("a")
    ctx = context_of(store.recent_requests("a", limit=1)[0])
    texts = ["a long and complete reply about it, number 9.", "no 9"]
    sa = member_scores(load_live_reward_model(store, "a", embedder), ctx, texts).mean(0)
    sb = member_scores(load_live_reward_model(store, "b", embedder), ctx, texts).mean(0)
    assert sa[1] > sa[0] and sb[0] > sb[1]  # each reward model has its own profile's taste

    # switching profile switches the adapter that serves and the reward model that chooses: the
    # Services facade, the UI's handlers and the API's status follow the request's profile
    from fastapi.testclient import TestClient

    from assistant.app.cli.serve import build_app
    from assistant.app.services import SuggestRequest
    from assistant.app.ui.handlers import header_text, suggest_continue

    svc = _services(store, tiny_model_dir, embedder)
    live = {p: (store.live_version(p, "policy").id, store.live_version(p, "reward").id) for p in ("a", "b")}
    for p in ("a", "b", "a"):
        res = svc.suggest(SuggestRequest(mode="continue", text=TEXT, k=1, draw=3, max_new_tokens=6, seed=2, profile=p))
        assert (res.policy_version, res.choice["reward_version"]) == live[p]
        *_, last = suggest_continue(svc, p, TEXT, None, 1, 0.8, 0.95, 6, 3, False, 3, True)
        assert last[4 * MAX_K]["policy_version"] == live[p][0]  # the candidates' state after the rows
        assert f"**live policy** v{live[p][0]}" in header_text(svc, p) and f"**reward model** v{live[p][1]}" \
            in header_text(svc, p)
    client = TestClient(build_app(svc, with_ui=False))
    for p in ("a", "b"):
        st = client.get("/api/v1/status", params={"profile": p}).json()
        assert (st["profile"], st["policy_version"], st["reward_version"]) == (p, *live[p])
        assert st["loaded_policy_version"] == live[p][0]
        assert st["learner"]["metrics"]["learner/last_feedback_id"] == store.last_feedback_id(p)


def test_the_all_profiles_learner_skips_a_profile_another_learner_holds(tmp_path, tiny_model_dir, capsys):
    """`inkloop learn --all-profiles --once` beside `inkloop learn --profile b` (its lock held): b is
    skipped and the output says why; a learns; once b is free, b learns too."""
    import json

    import app
    from storage.locks import learner_lock
    from storage.store import Store
    from tests.test_learner import LEARN_FLAGS

    s = Store(tmp_path / "inkloop.db")
    _rate(s, "a", good_is_long=True, n=3)
    _rate(s, "b", good_is_long=False, n=3)
    argv = ["learn", "--all-profiles", "--once", "--json", "--model", str(tiny_model_dir), "--data-dir",
            str(tmp_path), *LEARN_FLAGS, "--min-new-feedback", "1", "--no-train-policy"]
    with learner_lock(tmp_path, "b"):
        assert app.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a"]["outcome"] == "reward" and out["b"]["outcome"] == "locked"
    assert "another learner" in out["b"]["reason"] and "'b'" in out["b"]["reason"]
    assert s.live_version("a", "reward") is not None and s.live_version("b", "reward") is None
    assert s.learner_state("b") is None  # what the other learner owns is left alone
    assert app.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["b"]["outcome"] == "reward" and out["a"]["outcome"] == "skipped"
    assert s.live_version("b", "reward") is not None
    s.close()


def test_the_server_starts_one_learner_for_all_profiles_and_records_its_exit_for_each(store, tmp_path):
    import sys

    from assistant.app.supervisor import LearnerSupervisor

    argv = LearnerSupervisor.learn_argv(tmp_path, None)
    assert "--all-profiles" in argv and "--profile" not in argv
    for p in ("a", "b"):
        store.ensure_profile(p)
    sup = LearnerSupervisor([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, store=store,
                            min_backoff_s=0.05, max_backoff_s=0.1)
    sup.start()
    deadline = time.time() + 30
    while time.time() < deadline and sup.restarts < 1:
        time.sleep(0.05)
    sup.stop()
    for p in ("a", "b", "default"):
        assert "exited with code 3" in store.events(p, kind="learner")[0]["reason"]
        assert store.learner_state(p)["phase"] == "error"


@pytest.mark.parametrize("held", [False, True])
def test_run_forever_stops_and_leaves_every_profile_it_ran_stopped(store, tmp_path, held):
    """The loop (no model needed: nothing is due) writes each profile's state, and on stop marks
    them stopped, except one another process holds."""
    import threading

    from reward.loop.config import LearnerConfig
    from reward.loop.learner import Learner
    from reward.loop.profiles import ProfileLearners
    from storage.locks import LockHeld, learner_lock

    for p in ("a", "b"):
        store.ensure_profile(p)
    loop = ProfileLearners(store, tmp_path, lambda p: Learner(store, tmp_path, p, None, None,
                                                              LearnerConfig(min_new_feedback=5)), poll_s=0.05)
    lock = learner_lock(tmp_path, "b")
    t = threading.Thread(target=loop.run_forever)
    t.start()
    deadline = time.time() + 10
    while time.time() < deadline and not all(store.learner_state(p) for p in ("a", "b")):
        time.sleep(0.02)
    while held and not lock.held:  # between b's turns
        try:
            lock.acquire()
        except LockHeld:
            time.sleep(0.01)
    loop.stop()
    t.join(10)
    lock.release()
    assert store.learner_state("a")["phase"] == "stopped"
    assert store.learner_state("b")["phase"] == ("waiting" if held else "stopped")
