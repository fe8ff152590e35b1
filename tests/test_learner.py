"""The background learner: guards (pure, hand-worked), commands, and full cycles on the tiny model."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reward.loop.config import LearnerConfig
from reward.loop.evaluation import paired_win_rate, weighted_agreement
from reward.loop.guards import (
    NonFiniteWatch,
    guard_kl,
    guard_length_hacking,
    length_taste,
    guard_nonfinite,
    guard_reward_hacking,
    pearson,
)
from reward.loop.learner import send_command
from reward.rl.preference import PolicyPair


# ----------------------------------------------------------------------------- pure guards
def test_pearson_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = [1,2,3,4], y = [1,3,2,4]: dx = [-1.5,-.5,.5,1.5], dy = [-1.5,.5,-.5,1.5]
    # sum dxdy = 2.25-.25-.25+2.25 = 4; sum dx^2 = sum dy^2 = 5 -> r = 0.8
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0  # no variance
    assert pearson([1], [2]) == 0.0


def test_win_rate_counts_ties_half():
    assert paired_win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx((2 + 0.5) / 4)
    assert paired_win_rate([], []) == 0.5


def test_weighted_agreement_by_hand():
    # margins +1 (w 1), -2 (w 0.25), 0 (w 0.5), +3 (w 0.25): (1 + 0 + 0.25 + 0.25) / 2 = 0.75
    assert weighted_agreement([1.0, -2.0, 0.0, 3.0], [1.0, 0.25, 0.5, 0.25]) == pytest.approx(0.75)
    # every weight 1: the paired win-rate against zero
    m = [1.0, -2.0, 0.0, 3.0]
    assert weighted_agreement(m, [1.0] * 4) == pytest.approx(paired_win_rate(m, [0.0] * 4))
    assert weighted_agreement([], []) == 0.5 and weighted_agreement([1.0], [0.0]) == 0.5
    with pytest.raises(ValueError, match="weights"):
        weighted_agreement([1.0, 2.0], [1.0])


def test_guard_nonfinite():
    assert guard_nonfinite({"rl/loss": 0.3, "rl/kl": 0.01, "rl/steps": 2}) is None
    g = guard_nonfinite({"rl/loss": float("nan"), "rl/kl": 0.1, "rl/reward": float("inf")})
    assert g.action == "discard" and "rl/loss" in g.reason and "rl/reward" in g.reason
    g = guard_nonfinite({"rl/loss": 0.1}, saw_nonfinite_reward=True)
    assert g is not None and "reward" in g.reason


def test_guard_kl_shrinks_then_discards():
    assert guard_kl(0.5, max_kl=1.0, retries_left=1) is None
    g = guard_kl(1.5, max_kl=1.0, retries_left=1)
    assert g.action == "shrink" and "1.500" in g.reason
    assert guard_kl(1.5, max_kl=1.0, retries_left=0).action == "discard"
    assert guard_kl(float("nan"), max_kl=1.0, retries_left=3).action == "discard"


def test_guard_kl_bounds_the_kl_to_the_base_too():
    """A small step from a version already near the bound: the step's KL (0.5) passes, the
    candidate's KL to the base (1.2) does not; within both, nothing fires."""
    assert guard_kl(0.5, max_kl=1.0, retries_left=1, base_kl=0.9) is None
    g = guard_kl(0.5, max_kl=1.0, retries_left=1, base_kl=1.2)
    assert g.action == "shrink" and "KL to the base model 1.200" in g.reason and "KL 0.500" not in g.reason
    assert g.data == {"kl": 0.5, "max_kl": 1.0, "base_kl": 1.2}
    assert guard_kl(0.5, max_kl=1.0, retries_left=0, base_kl=1.2).action == "discard"
    assert guard_kl(0.5, max_kl=1.0, retries_left=1, base_kl=float("inf")).action == "discard"
    both = guard_kl(1.5, max_kl=1.0, retries_left=1, base_kl=2.0)
    assert "KL 1.500; KL to the base model 2.000 above the limit 1.000" in both.reason
    # the live re-check: only the KL to the base, and its own action
    live = guard_kl(None, max_kl=1.0, retries_left=0, base_kl=1.2, action="rollback")
    assert live.action == "rollback" and live.reason == "KL to the base model 1.200 above the limit 1.000"
    assert guard_kl(None, max_kl=1.0, retries_left=0, base_kl=0.8, action="rollback") is None


def test_guard_reward_hacking():
    # reward +0.5, agreement 0.70 -> 0.50 (drop 0.2 > 0.1): hacking
    g = guard_reward_hacking(1.5, 1.0, 0.5, 0.7, gain_eps=0.0, agreement_drop=0.1)
    assert g.guard == "reward_hacking" and g.data["reward_gain"] == pytest.approx(0.5)
    assert g.data["agreement_drop"] == pytest.approx(0.2)
    # reward rising, agreement steady: fine; reward falling with agreement falling: not hacking
    assert guard_reward_hacking(1.5, 1.0, 0.68, 0.7, 0.0, 0.1) is None
    assert guard_reward_hacking(0.5, 1.0, 0.3, 0.7, 0.0, 0.1) is None
    assert guard_reward_hacking(1.5, 1.0, 0.5, 0.7, 0.0, 0.1, action="rollback").action == "rollback"
    # too few held-out pairs to judge agreement by: one pair of three flipping is not evidence
    assert guard_reward_hacking(1.5, 1.0, 0.0, 0.5, 0.0, 0.1, n_pairs=3, min_pairs=8) is None
    assert guard_reward_hacking(1.5, 1.0, 0.0, 0.5, 0.0, 0.1, n_pairs=8, min_pairs=8) is not None


def test_guard_length_hacking():
    cfg = LearnerConfig(max_length_corr=0.9, min_length_corr_samples=4)
    lengths = [5, 10, 15, 20]
    by_length = [0.1, 0.2, 0.3, 0.4]  # corr = 1
    g = guard_length_hacking(by_length, lengths, reward_gain=0.2, cfg=cfg)
    assert g is not None and g.guard == "length_hacking" and g.data["length_corr"] == pytest.approx(1.0)
    assert guard_length_hacking(by_length, lengths, reward_gain=-0.1, cfg=cfg) is None  # reward not rising
    assert guard_length_hacking([0.1, 0.4, 0.3, 0.2], lengths, 0.2, cfg) is None  # corr 0.2
    assert guard_length_hacking(by_length[:3], lengths[:3], 0.2, cfg) is None  # too few samples


def test_length_taste_counts_the_held_out_choices_that_follow_length():
    pairs = [("a b", "a b c"), ("a", "a b c d"), ("a b c", "a b"), ("x y", "z w")]  # shorter, shorter, longer, same
    assert length_taste(pairs, -1.0) == (pytest.approx(2 / 3), 3)
    assert length_taste(pairs, +1.0) == (pytest.approx(1 / 3), 3)
    assert length_taste([("a b", "c d")], -1.0) == (0.0, 0)


def test_guard_length_hacking_spares_a_person_whose_own_choices_follow_length():
    cfg = LearnerConfig(max_length_corr=0.9, min_length_corr_samples=4, min_agreement_pairs=4,
                        length_taste_share=0.75)
    lengths, shorter_better = [5, 10, 15, 20], [0.4, 0.3, 0.2, 0.1]  # corr -1: the reward wants short
    short_wins = [("a b", "a b c d")] * 3 + [("a b c", "a b")]  # 3 of 4 chose the shorter: 0.75
    assert guard_length_hacking(shorter_better, lengths, 0.2, cfg, feedback_pairs=short_wins) is None
    # the person chose the longer text as often: the reward's length-following is its own shortcut
    mixed = [("a b", "a b c d")] * 2 + [("a b c", "a b")] * 2
    g = guard_length_hacking(shorter_better, lengths, 0.2, cfg, feedback_pairs=mixed)
    assert g is not None and g.data["feedback_length_share"] == pytest.approx(0.5)
    # the person wants length, but the reward follows it the other way: still fires
    assert guard_length_hacking([0.1, 0.2, 0.3, 0.4], lengths, 0.2, cfg, feedback_pairs=short_wins) is not None
    # too few held-out pairs of different length to call length their taste
    assert guard_length_hacking(shorter_better, lengths, 0.2, cfg, feedback_pairs=short_wins[:3]) is not None


def test_nonfinite_watch_sees_nan():
    class Out:
        def __init__(self, total):
            self.total = np.asarray(total)

    w = NonFiniteWatch(lambda prompts, texts: Out([0.1 for _ in texts]))
    w([1, 2], ["a", "b"])
    assert not w.seen
    w.fn = lambda prompts, texts: Out([0.1, math.nan])
    w([1, 2], ["a", "b"])
    assert w.seen


def test_send_command_and_state(store):
    st = send_command(store, "default", "pause")
    assert st["paused"] is True and st["command"] == "pause"
    assert store.take_learner_command("default") == "pause"
    assert store.take_learner_command("default") is None
    assert send_command(store, "default", "resume")["paused"] is False
    with pytest.raises(ValueError, match="unknown learner action"):
        send_command(store, "default", "explode")


# ----------------------------------------------------------------------------- cycles on the tiny model
TEXTS = [
    "The rain had not stopped for three days.",
    "She opened the door and the wind rushed in.",
    "A lighthouse keeper counts the ships.",
    "He said that it was fine, but it was not.",
    "The harbour was quiet before the storm.",
    "Outline the journey home in three steps.",
]


@pytest.fixture
def api(tmp_path, tiny_model_dir, embedder):
    """The REST API (with the learning routes) on the tiny model, its store in tmp_path."""
    import argparse

    from fastapi.testclient import TestClient

    from assistant.app.cli.common import build_services, load_models
    from assistant.app.cli.serve import build_app

    args = argparse.Namespace(model=str(tiny_model_dir), data_dir=str(tmp_path), profile="default",
                              device="cpu", dtype="float32", threads=1)
    lm, _ = load_models(args, with_embedder=False, progress=None)
    services = build_services(args, lm=lm, embedder=embedder)
    client = TestClient(build_app(services, with_ui=False))
    yield client, services
    services.store.close()


def give_feedback(client, n_requests: int = 6) -> int:
    """Suggestions and ratings through the API; longer candidates are preferred. Returns #feedback."""
    n = 0
    for i in range(n_requests):
        r = client.post("/api/v1/suggest", json={"mode": "continue", "text": TEXTS[i % len(TEXTS)], "k": 3,
                                                 "max_new_tokens": 8, "seed": i})
        assert r.status_code == 200, r.text
        sugg = r.json()["suggestions"]
        order = sorted(sugg, key=lambda s: -len(s["text"]))
        assert client.post("/api/v1/feedback", json={"suggestion_id": order[0]["id"], "kind": "thumb",
                                                     "value": 1}).status_code == 200
        n += 1
        if len(order) > 1:
            client.post("/api/v1/feedback", json={"suggestion_id": order[-1]["id"], "kind": "thumb", "value": -1})
            client.post("/api/v1/feedback", json={"suggestion_id": order[0]["id"], "kind": "rank",
                                                  "ranking": [s["id"] for s in order]})
            n += 2
    return n


LEARN_FLAGS = ["--threads", "1", "--nice", "0", "--rl-steps", "1", "--rl-k", "2", "--rl-prompts-per-step", "2",
               "--rl-max-new-tokens", "8", "--eval-prompts", "3", "--eval-max-new-tokens", "8",
               "--agreement-drop", "1.0", "--max-length-corr", "1.01", "--max-kl", "1000",
               "--no-publish-requires-gain", "--min-win-rate", "0"]
"""Small, and with the publish gate off: on the tiny model one update rarely beats its parent,
and these tests are about the cycle's mechanics (the gate has its own test)."""


def _tiny_base(tiny_model_dir):
    """(base model, tokenizer) of the tiny test LM, loaded like the learner loads the real one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.lm.models import prepare_tokenizer

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prepare_tokenizer(tok)
    return base, tok


def _rate_pairs(store, replies) -> None:
    """One continue request per TEXTS entry with replies(i) = (good, bad): thumb up / thumb down."""
    for i, t in enumerate(TEXTS):
        req = store.record_request(profile_id="default", mode="continue", text=t, options={},
                                   prompt=f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n",
                                   policy_version=0, suggestions=list(replies(i)))
        store.add_feedback(req.suggestions[0].id, "thumb", 1)
        store.add_feedback(req.suggestions[1].id, "thumb", -1)



def test_feedback_api_learn_once_publishes_and_next_suggestion_uses_it(api, tmp_path, tiny_model_dir, capsys):
    import json

    import app

    client, services = api
    common = ["--model", str(tiny_model_dir), "--data-dir", str(tmp_path)]
    # too little feedback: the learner waits
    give_feedback(client, 1)
    assert app.main(["learn", "--once", "--json", *common, *LEARN_FLAGS, "--min-new-feedback", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "skipped" and "waiting for feedback" in out["reason"]
    assert services.store.learner_state("default")["phase"] == "waiting"

    give_feedback(client, 5)
    assert app.main(["learn", "--once", "--json", *common, *LEARN_FLAGS, "--min-new-feedback", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "published", out
    vid = out["version"]
    live = services.store.live_version("default", "policy")
    assert live.id == vid and live.status == "published"
    for k in ("rm/accuracy", "rl/kl", "eval/reward", "eval/win_rate", "eval/kl", "eval/step_kl", "eval/agreement"):
        assert k in live.metrics, k
    assert services.store.live_version("default", "reward") is not None
    st = client.get("/api/v1/status").json()
    assert st["policy_version"] == vid and st["learner"]["phase"] == "idle"
    assert st["learner"]["metrics"]["learner/last_feedback_id"] == services.store.last_feedback_id("default")

    r = client.post("/api/v1/suggest", json={"mode": "continue", "text": TEXTS[0], "k": 2, "max_new_tokens": 6})
    assert r.json()["policy_version"] == vid  # hot-swapped before the next generation

    vs = client.get("/api/v1/versions").json()
    assert vs["live"] == vid and vs["versions"][0]["id"] == vid and vs["versions"][0]["live"]
    assert any(e["kind"] == "publish" and e["version_id"] == vid for e in client.get("/api/v1/events").json()["events"])

    # nothing new: the next check skips
    assert app.main(["learn", "--once", "--json", *common, *LEARN_FLAGS, "--min-new-feedback", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "skipped"

    # rollback through the API and the CLI
    assert client.post(f"/api/v1/versions/{vid}/rollback").status_code == 200
    assert client.post("/api/v1/versions/0/rollback").json() == {"live": 0}
    assert client.post("/api/v1/suggest", json={"mode": "continue", "text": TEXTS[1], "k": 1,
                                                "max_new_tokens": 4}).json()["policy_version"] == 0
    assert app.main(["versions", "rollback", str(vid), *common]) == 0
    assert services.store.live_version("default").id == vid
    assert app.main(["versions", "list", *common]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^\*\s+{vid}\s+published", listing, re.M), listing
    r = client.post("/api/v1/versions/99999/rollback")
    assert r.status_code == 404 and "error" in r.json()


@pytest.mark.parametrize("flags, words", [
    (["--rl-seconds", "0"], "needs a CPU-time budget"),
    (["--rl-kl-stop", "1.5"], "fraction of max_kl"),
    (["--rl-algo", "distill", "--rl-k", "1"], "k >= 2"),
])
def test_learn_rejects_settings_it_cannot_run(capsys, tmp_path, tiny_model_dir, flags, words):
    import app

    rc = app.main(["learn", "--once", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err


def test_nan_reward_is_caught_by_the_guard(store, tmp_path, tiny_model_dir, embedder):
    import copy

    from reward.functions import RewardFunction
    from reward.loop.learner import Learner
    from reward.rl.config import RLConfig

    base, tok = _tiny_base(tiny_model_dir)
    _rate_pairs(store, lambda i: (f"long reply number {i} goes on", f"short {i}"))

    class NaNReward(RewardFunction):
        def __call__(self, prompts, texts, extras=None):
            out = super().__call__(prompts, texts, extras)
            out.total[:] = float("nan")
            return out

    cfg = LearnerConfig(min_new_feedback=1, rl_steps=1, eval_prompts=2, eval_max_new_tokens=6, threads=1, nice=0)
    cfg.rl = RLConfig(k=2, prompts_per_step=2, max_new_tokens=6, seed=0)
    learner = Learner(store, tmp_path, "default", lambda: (copy.deepcopy(base), tok), embedder, cfg,
                      reward_fn_factory=lambda rm: NaNReward(rm=rm))
    res = learner.run_once()
    assert res.outcome == "discarded", res
    assert any(g.guard == "nonfinite" for g in res.guards) or "non-finite" in res.reason
    assert store.live_version("default", "policy") is None  # nothing published
    for v in store.versions("default", "policy"):
        assert v.status == "discarded" and not Path(v.path).exists()
    ev = store.events("default", kind="guard")
    assert ev and "non-finite" in ev[0]["reason"]
    assert store.learner_state("default")["phase"] == "idle"


def test_feedback_without_prompts_is_consumed_once(store, tmp_path, embedder):
    # e.g. an imported ratings file without prompts: the reward model trains, RL has nothing to
    # evaluate on; the next poll must wait for new feedback, not retrain and republish in a loop
    from reward.loop.learner import Learner

    for i, t in enumerate(TEXTS):
        req = store.record_request(profile_id="default", mode="imported", text="", options={}, prompt="",
                                   policy_version=0, suggestions=[f"{t} It went on and on.", f"short {i}"])
        store.add_feedback(req.suggestions[0].id, "thumb", 1)
        store.add_feedback(req.suggestions[1].id, "thumb", -1)
    learner = Learner(store, tmp_path, "default", lambda: (_ for _ in ()).throw(AssertionError("no model needed")),
                      embedder, LearnerConfig(min_new_feedback=1))
    res = learner.run_once()
    assert res.outcome == "skipped" and "no stored prompts" in res.reason
    assert store.learner_state("default")["phase"] == "idle"
    assert len(store.versions("default", "reward")) == 1
    res = learner.run_once()
    assert res.outcome == "skipped" and "0 new" in res.reason
    assert len(store.versions("default", "reward")) == 1


def test_commands_pause_resume_train_now(store, tmp_path):
    from reward.loop.learner import Learner

    learner = Learner(store, tmp_path, "default", lambda: (_ for _ in ()).throw(AssertionError("no model needed")),
                      None, LearnerConfig(min_new_feedback=100))
    send_command(store, "default", "pause")
    assert learner.run_once().reason == "paused"
    assert store.learner_state("default")["phase"] == "paused"
    send_command(store, "default", "resume")
    res = learner.run_once()
    assert res.outcome == "skipped" and "0 new" in res.reason  # no feedback at all
    send_command(store, "default", "train_now")
    learner.handle_commands()
    assert learner.force


# ----------------------------------------------------------------------------- dashboard and process control
def test_learning_tab_data_and_build(store, tmp_path, tiny_lm):
    import gradio as gr

    from assistant.app.services import Services
    from assistant.app.ui.learning import (
        TABS,
        do_learner_command,
        do_rollback,
        events_frame,
        feedback_frame,
        learner_status,
        metric_frame,
        rollback_choices,
        versions_frame,
    )
    from assistant.lm.generate import Generator
    from storage.artifacts import save_version

    model, tok = tiny_lm
    svc = Services(store, Generator(model, tok), None, model_name="tiny")
    md, prog = learner_status(svc, None)
    assert "has not run yet" in md and prog == 0.0

    def w(d):
        (d / "adapter").mkdir()

    v1 = save_version(store, tmp_path, kind="policy", profile_id="default", writer=w, publish=True,
                      metrics={"eval/reward": 0.1, "eval/win_rate": 0.5, "eval/kl": 0.2})
    v2 = save_version(store, tmp_path, kind="policy", profile_id="default", writer=w, publish=True,
                      metrics={"eval/reward": 0.3, "eval/win_rate": 0.75, "eval/kl": 0.4})
    save_version(store, tmp_path, kind="reward", profile_id="default", writer=w, metrics={"rm/accuracy": 0.8})
    store.set_learner_state("default", phase="rl", progress=0.4, message="RL: 2 updates", heartbeat=time.time())
    store.add_event("guard", "KL 9.000 above the limit 4.000: update discarded", "default", v2.id)

    md, prog = learner_status(svc, "default")
    assert "rl" in md and "RL: 2 updates" in md and f"version **{v2.id}**" in md and prog == pytest.approx(0.4)
    f = metric_frame(svc, None, "eval/win_rate", "policy")
    assert f["version"].tolist() == [v1.id, v2.id] and f["value"].tolist() == [0.5, 0.75]
    assert metric_frame(svc, None, "rm/accuracy", "reward")["value"].tolist() == [0.8]
    vf = versions_frame(svc, None)
    assert vf["version"].tolist() == [v2.id, v1.id] and vf["live"].tolist() == ["●", ""]
    assert "KL 9.000" in events_frame(svc, None)["reason"].iloc[0]
    assert feedback_frame(svc, None).set_index("kind")["count"].sum() == 0
    assert [c[1] for c in rollback_choices(svc, None)] == [v1.id, 0]
    assert "version " + str(v1.id) in do_rollback(svc, None, v1.id)
    assert store.live_version("default").id == v1.id
    assert do_learner_command(svc, None, "pause").startswith("Paused")
    assert store.learner_state("default")["paused"]
    assert "paused" in learner_status(svc, None)[0]

    with gr.Blocks() as demo:
        with gr.Tabs():
            for fn in TABS:
                fn(svc)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"tab-learning", "tab-export", "versions-table", "rollback", "learner-train-now", "export-go"} <= ids
    assert sum(isinstance(b, gr.LinePlot) for b in demo.blocks.values()) == 4

    # and inside the app's own UI, as `inkloop serve` builds it
    from assistant.app.ui.writer import build_ui

    app_ids = {getattr(b, "elem_id", None) for b in build_ui(svc, TABS).blocks.values()}
    assert {"tab-learning", "tab-export", "learner-status", "export-file"} <= app_ids


def test_supervisor_restarts_a_crashed_learner(store, tmp_path):
    import sys

    from assistant.app.supervisor import LearnerSupervisor

    marker = tmp_path / "runs"
    code = f"import pathlib; p = pathlib.Path({str(marker)!r}); p.write_text(p.read_text() + 'x' if p.exists() else 'x'); raise SystemExit(3)"
    sup = LearnerSupervisor([sys.executable, "-c", code], tmp_path, store=store, min_backoff_s=0.05, max_backoff_s=0.2)
    sup.start()
    deadline = time.time() + 30
    while time.time() < deadline and len(marker.read_text() if marker.exists() else "") < 3:
        time.sleep(0.05)
    sup.stop()
    assert len(marker.read_text()) >= 3 and sup.restarts >= 2
    ev = store.events("default", kind="learner")
    assert ev and "exited with code 3" in ev[0]["reason"]
    assert store.learner_state("default")["phase"] == "error"


# ----------------------------------------------------------------------------- the real bundled model
@pytest.mark.integration
def test_short_learn_cycle_on_the_real_model(store, tmp_path, real_lm, embedder):
    """A few dozen feedback rows -> one short cycle (1 RL step, 16 tokens) on SmolLM2 -> published
    version that a Generator on the real model hot-swaps in."""
    import copy

    from assistant.lm.generate import Generator
    from assistant.lm.prompts import build_prompt, render
    from reward.loop.learner import Learner
    from reward.rl.config import RLConfig

    drafts = [
        "The rain had not stopped for three days, and the river was rising.",
        "She opened the letter slowly, afraid of what it might say.",
        "The old lighthouse keeper climbed the stairs one last time.",
        "Nobody in the village remembered who had planted the orchard.",
        "The train was late again, and Maria had run out of patience.",
        "At the edge of the forest, the path split in two.",
        "He found the key under a loose stone by the gate.",
        "The storm arrived at midnight, bright and loud.",
        "Every morning the baker sang the same song.",
        "The map was older than anyone had guessed.",
        "When the lights went out, the whole street fell silent.",
        "The kitten had climbed to the very top of the tree.",
    ]
    good = "{} Then, slowly, the morning light spread over the hills and everyone breathed again."
    bad = "{} ok."
    for i, d in enumerate(drafts):
        prompt = render(build_prompt("continue", d, {}), real_lm.tokenizer)
        req = store.record_request(profile_id="default", mode="continue", text=d, options={}, prompt=prompt,
                                   policy_version=0, suggestions=[good.format("It was late."), bad.format("No"),
                                                                  f"Something happened ({i})."])
        a, b, c = req.suggestions
        store.add_feedback(a.id, "thumb", 1)
        store.add_feedback(b.id, "thumb", -1)
        store.add_feedback(a.id, "rank", ranking=[a.id, c.id, b.id])
    assert len(store.feedback("default")) == 36

    base = real_lm.model
    # the publish gate off: one update on two prompts need not beat the base; this test is about
    # publishing and the hot swap on the real model
    cfg = LearnerConfig(min_new_feedback=10, rl_steps=1, eval_prompts=2, eval_samples=1, eval_max_new_tokens=16,
                        agreement_drop=1.0, max_length_corr=1.01, max_kl=1e6, threads=1, nice=0,
                        publish_requires_gain=False, min_win_rate=0.0,
                        rl=RLConfig(algo="reinforce", k=2, prompts_per_step=2, max_new_tokens=16, seed=0))
    learner = Learner(store, tmp_path, "default", lambda: (copy.deepcopy(base), real_lm.tokenizer), embedder, cfg)
    t0 = time.perf_counter()
    res = learner.run_once()
    seconds = time.perf_counter() - t0
    assert res.outcome == "published", res
    live = store.live_version("default", "policy")
    assert live.id == res.version_id
    assert (Path(live.path) / "adapter" / "adapter_model.safetensors").exists()
    assert (Path(live.path) / "value_head.safetensors").exists()
    assert all(math.isfinite(v) for k, v in live.metrics.items() if k.startswith(("rl/", "eval/")))
    assert live.metrics["rm/accuracy"] >= 0.5  # "long & complete" vs "ok." is easy to learn
    st = store.learner_state("default")
    assert st["phase"] == "idle" and st["metrics"]["learner/last_feedback_id"] == store.last_feedback_id("default")
    print(f"real-model learn cycle: {seconds:.1f} s, metrics {dict(sorted(live.metrics.items()))}")

    gen = Generator(copy.deepcopy(base), real_lm.tokenizer,
                    version_source=lambda _profile: (live.id, live.path))
    assert gen.refresh_policy() == live.id


def test_crash_between_write_and_rename_in_a_cycle_leaves_no_partial_version(store, tmp_path, tiny_model_dir,
                                                                           embedder, monkeypatch):
    import copy

    from reward.loop.learner import Learner
    from reward.rl.config import RLConfig
    from storage import artifacts
    from storage.artifacts import versions_root

    base, tok = _tiny_base(tiny_model_dir)
    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))

    real_rename = artifacts.os.rename

    def rename(src, dst):
        if Path(dst).name.startswith("policy-"):
            raise OSError("injected crash before the rename of a policy version")
        return real_rename(src, dst)

    monkeypatch.setattr(artifacts.os, "rename", rename)
    cfg = LearnerConfig(min_new_feedback=1, rl_steps=1, eval_prompts=2, eval_samples=1, eval_max_new_tokens=6,
                        agreement_drop=1.0, max_length_corr=1.01, max_kl=1e6, threads=1, nice=0,
                        publish_requires_gain=False, min_win_rate=0.0)  # the next cycle publishes
    cfg.rl = RLConfig(algo="reinforce", k=2, prompts_per_step=2, max_new_tokens=6, seed=0)
    learner = Learner(store, tmp_path, "default", lambda: (copy.deepcopy(base), tok), embedder, cfg)
    res = learner.run_once()
    assert res.outcome == "error" and "injected crash" in res.reason
    assert store.versions("default", "policy") == [] and store.live_version("default", "policy") is None
    leftovers = [p.name for p in (versions_root(tmp_path) / "default").iterdir()]
    assert not [n for n in leftovers if n.startswith(("policy-", ".tmp-"))], leftovers
    st = store.learner_state("default")
    assert st["phase"] == "error" and "injected crash" in st["error"]
    assert store.events("default", kind="error")
    assert store.feedback("default") and store.get_request(1).suggestions  # nothing else was touched

    monkeypatch.undo()
    res = learner.run_once(force=True)  # the feedback was not consumed: the retry publishes
    assert res.outcome == "published", res
    assert store.live_version("default", "policy").id == res.version_id

    # a second cycle re-checks the live version against its parent (the base model), trains from
    # the live version and measures the step KL against it
    res2 = learner.run_once(force=True)
    assert res2.outcome == "published", res2
    v2 = store.get_version(res2.version_id)
    assert v2.parent_id == res.version_id and store.live_version("default").id == v2.id
    assert v2.metrics["eval/reward_live"] == pytest.approx(res2.metrics["eval/reward_live"])
    assert learner.metrics["learner/cycles"] == 2


def test_evaluate_policies_kl_and_agreement(tmp_path, tiny_model_dir):
    """Base vs itself: KL 0 and agreement 0.5 (every implicit reward is 0); two identical adapters:
    step KL 0 while the KL to the base is not; a real (length) reward is computed per sample."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.lm.models import prepare_tokenizer
    from reward.functions import RewardConfig, RewardFunction, RolloutPrompt
    from reward.loop.evaluation import evaluate_policies
    from storage.artifacts import save_version
    from storage.store import Store
    from tests.test_hotswap import lora_policy_writer

    st = Store(tmp_path / "db.sqlite")
    a = save_version(st, tmp_path, kind="policy", profile_id="p", writer=lora_policy_writer(tiny_model_dir, 7))
    import shutil

    b = save_version(st, tmp_path, kind="policy", profile_id="p",  # the very same weights
                     writer=lambda d: shutil.copytree(Path(a.path) / "adapter", d / "adapter"))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prepare_tokenizer(tok)

    def fresh():
        return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

    prompts = [RolloutPrompt(prompt_text=f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n", mode="continue",
                             context=t, source_text=t) for t in TEXTS[:2]]
    pairs = [PolicyPair(prompts[0].prompt_text, "The river rose.", "no"),
             PolicyPair(prompts[1].prompt_text, "The wind.", "the the")]
    rf = RewardFunction(RewardConfig.only(length=1.0))
    cfg = LearnerConfig(eval_samples=2, eval_max_new_tokens=6)
    base = evaluate_policies(fresh(), tok, {0: None}, prompts, pairs, rf, cfg)[0]
    assert base.kl == 0.0 and base.agreement == 0.5 and len(base.rewards) == 4
    assert base.rewards == pytest.approx(list(rf([p for p in prompts for _ in range(2)], base.texts).total))
    res = evaluate_policies(fresh(), tok, {a.id: str(Path(a.path) / "adapter"), b.id: str(Path(b.path) / "adapter")},
                            prompts, pairs, rf, cfg, only={b.id}, kl_to={b.id: a.id})
    assert set(res) == {b.id}
    assert res[b.id].step_kl == pytest.approx(0.0, abs=1e-5) and abs(res[b.id].kl) > 1e-3
    assert res[b.id].agreement in (0.0, 0.5, 1.0)  # two pairs, ties count half
    # a cache shared between evaluations: the second one computes no log-prob the first did
    from reward.loop.evaluation import LogpCache

    cache = LogpCache()
    dirs = {a.id: str(Path(a.path) / "adapter")}
    first = evaluate_policies(fresh(), tok, dirs, prompts, pairs, rf, cfg, cache=cache)[a.id]
    n = cache.misses
    again = evaluate_policies(fresh(), tok, dirs, prompts, pairs, rf, cfg, cache=cache)[a.id]
    assert cache.misses == n and cache.hits >= n
    assert (again.kl, again.agreement, again.texts) == (first.kl, first.agreement, first.texts)
    assert (first.kl, first.agreement) == pytest.approx((res[b.id].kl, res[b.id].agreement))  # b = a's weights
    cache.keep({0})
    assert cache.data and all(k[0] == 0 for k in cache.data)
    cache.max_entries = 1
    cache.keep({0})
    assert cache.data == {}  # bounded: past max_entries it starts over
    st.close()


def test_the_learner_waits_at_safe_points_while_the_app_generates(store, tmp_path):
    """The server's hold (the Generator's busy hook in `inkloop serve`) keeps a learner process
    waiting at its next safe point — no signal, so never inside a database transaction — and it
    goes on as soon as the generation ends, or when the holder dies (the kernel drops the lock)."""
    import subprocess
    import sys

    from assistant.app.supervisor import LearnerSupervisor

    # a stand-in learner: every safe point is Hold.wait(), then one step of work (a counter)
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from storage.locks import Hold\n"
            "h = Hold(%r)\n"
            "n = 0\n"
            "while True:\n"
            "    h.wait(); n += 1\n"
            "    open(%r, 'w').write(str(n)); time.sleep(0.01)\n") % (str(Path(__file__).parents[1]), str(tmp_path),
                                                                     str(tmp_path / "n"))
    steps = tmp_path / "n"

    def count() -> int:
        try:
            return int(steps.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def advancing(within: float = 10.0) -> bool:
        a, end = count(), time.time() + within
        while time.time() < end:
            if count() > a:
                return True
            time.sleep(0.02)
        return False

    def stalled(seconds: float = 0.6) -> bool:
        a = count()
        time.sleep(seconds)
        return count() == a

    sup = LearnerSupervisor([sys.executable, "-c", code], tmp_path, store=store)
    sup.start()
    try:
        deadline = time.time() + 20
        while count() == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert advancing()
        with sup.busy():
            time.sleep(0.2)  # its current step ends, then it waits
            assert stalled()
            with sup.busy():  # nested generations share the hold
                assert stalled(0.3)
            assert stalled(0.3)
        assert advancing()  # going again once the generation is over
        with pytest.raises(ZeroDivisionError), sup.busy():
            1 / 0
        assert advancing()  # released even when generation fails
        # a holder that dies (kill -9) releases the learner too
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, %r)\n"
                                   "from storage.locks import Hold\n"
                                   "with Hold(%r).holding():\n"
                                   "    print('held', flush=True); time.sleep(60)\n"
                                   % (str(Path(__file__).parents[1]), str(tmp_path))],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        time.sleep(0.2)
        assert stalled()
        holder.kill()
        holder.wait()
        assert advancing()
    finally:
        sup.stop()
    assert sup.proc.poll() is not None


# ----------------------------------------------------------------------------- the guards on, end to end
def _guarded_learner(store, tmp_path, tiny_model_dir, embedder, **cfg_kw):
    import copy

    from reward.loop.learner import Learner
    from reward.rl.config import RLConfig

    base, tok = _tiny_base(tiny_model_dir)
    # the publish gate off unless asked for: these tests are about the other guards
    cfg = LearnerConfig(**{"min_new_feedback": 1, "rl_steps": 2, "eval_prompts": 2, "eval_samples": 1,
                           "eval_max_new_tokens": 6, "threads": 1, "nice": 0, "publish_requires_gain": False,
                           "min_win_rate": 0.0, **cfg_kw},
                        rl=RLConfig(algo="reinforce", k=2, prompts_per_step=2, max_new_tokens=6, lr=0.05, seed=0))
    return Learner(store, tmp_path, "default", lambda: (copy.deepcopy(base), tok), embedder, cfg)


def test_kl_guard_shrinks_and_retries_then_discards(store, tmp_path, tiny_model_dir, embedder):
    """A KL bound no update meets: the first candidate is shrunk (half the steps, half the learning
    rate) and retried, the retry is discarded; both are recorded as guard events, nothing is live."""
    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    # the RL's own KL stop is off: the guard, not the stop rule, is what this test is about
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, max_kl=-1e9, kl_retries=1, rl_kl_stop=0.0)
    res = learner.run_once()
    assert res.outcome == "discarded"
    assert [(g.guard, g.action) for g in res.guards] == [("kl", "shrink"), ("kl", "discard")]
    tried = sorted(store.versions("default", "policy"), key=lambda v: v.id)
    assert len(tried) == 2 and all(v.status == "discarded" for v in tried)
    first, retry = (json.loads((Path(v.path) / "config.json").read_text()) if Path(v.path).exists() else v.config
                    for v in tried)
    assert retry["rl"]["lr"] == pytest.approx(first["rl"]["lr"] / 2)
    assert [v.metrics["rl/steps"] for v in tried] == [2.0, 1.0]
    assert store.live_version("default", "policy") is None
    assert [e["data"]["action"] for e in store.events("default", kind="guard")][::-1] == ["shrink", "discard"]


def test_live_recheck_rolls_back_a_version_that_looks_hacked(store, tmp_path, tiny_model_dir, embedder):
    """Cycle 1 publishes; before cycle 2 trains, the live version is re-checked against its parent
    (the base model) with a reward-hacking rule it cannot pass, and is rolled back to the base."""
    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, max_kl=1e6)
    first = learner.run_once()
    assert first.outcome == "published", first
    assert store.live_version("default", "policy").id == first.version_id
    # from now on any reward gain with any drop in agreement counts as hacking, on however few pairs
    learner.cfg.reward_gain_eps, learner.cfg.agreement_drop, learner.cfg.min_agreement_pairs = -1e9, -1e9, 0
    second = learner.run_once(force=True)
    rollback = [g for g in second.guards if g.action == "rollback"]
    assert rollback and rollback[0].guard == "reward_hacking" and "rolled back to the base model" in rollback[0].reason
    live = store.live_version("default", "policy")
    assert live is None or live.id != first.version_id  # not the hacked version any more
    assert store.get_version(first.version_id).status == "rolled_back"
    assert any(e["data"]["action"] == "rollback" for e in store.events("default", kind="guard"))


def test_live_recheck_rolls_back_a_version_beyond_the_kl_bound(store, tmp_path, tiny_model_dir, embedder):
    """Cycle 1 publishes under a loose KL bound; the bound is then set below any KL (as if a
    person lowered --max-kl): the re-check rolls the live version back to the base, and the new
    candidate is held to the bound too (shrunk, then discarded)."""
    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, max_kl=1e6, rl_kl_stop=0.0)
    first = learner.run_once()
    assert first.outcome == "published", first
    learner.cfg.max_kl = -1e9
    second = learner.run_once(force=True)
    assert [(g.guard, g.action) for g in second.guards] == [("kl", "rollback"), ("kl", "shrink"), ("kl", "discard")]
    assert "KL to the base model" in second.guards[0].reason and "rolled back to the base model" in second.guards[0].reason
    assert store.get_version(first.version_id).status == "rolled_back"
    assert store.live_version("default", "policy") is None


# ----------------------------------------------------------------------------- the cycle's RL budget
def _candidate(store, res):
    """The version a cycle trained (published or discarded), and the per-update series of a metric."""
    v = store.get_version(res.version_id)
    return v, lambda name: [r["value"] for r in store.metric_series(name, v.id) if r["step"] > 0]


def test_rl_runs_for_its_cpu_budget(store, tmp_path, tiny_model_dir, embedder):
    """No step cap: RL keeps updating until the cycle's CPU-time budget is spent (real CPU
    time on the tiny model); given a whole-cycle allowance (simulate's rationing) RL gets what the
    reward model and the recheck leave of it."""
    from reward.rl.budget import stop_reason

    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, rl_steps=0, rl_seconds=2.0, rl_patience=0,
                               rl_kl_stop=0.0, max_kl=1e6)
    res = learner.run_once()
    v, series = _candidate(store, res)
    assert stop_reason(v.metrics) == "seconds"
    assert 1.0 <= v.metrics["rl/seconds"] <= 2.0 * 1.25, v.metrics["rl/seconds"]
    assert v.metrics["rl/steps"] >= 3 and len(series("rl/kl")) == v.metrics["rl/steps"]
    assert json.loads((Path(v.path) / "config.json").read_text())["stop"]["reason"] == "seconds"
    # the cycle may spend 4 CPU-s in all: RL gets less than that, and the whole cycle stays near it
    c0 = time.process_time()
    res2 = learner.run_once(force=True, cpu_seconds=4.0)
    cycle_s = time.process_time() - c0
    v2, _ = _candidate(store, res2)
    assert v2.metrics["rl/seconds"] < 4.0 and v2.metrics["rl/steps"] >= 1
    assert cycle_s <= 4.0 * 1.3, cycle_s


def test_rl_stops_at_the_kl_bound(store, tmp_path, tiny_model_dir, embedder):
    """Large steps: RL stops at the first update whose rollouts' KL to the base reaches
    rl_kl_stop * max_kl, long before its budget or its cap."""
    from reward.rl.budget import stop_reason

    import copy

    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, rl_steps=200, rl_seconds=600.0,
                               rl_patience=0, rl_kl_stop=0.5, max_kl=4.0, kl_retries=0)
    base, tok = _tiny_base(tiny_model_dir)
    with torch.no_grad():  # a peaky next-token distribution (see test_policy._peaky_tiny): KL can grow
        base.get_input_embeddings().weight.mul_(8.0)
    learner.lm_factory = lambda: (copy.deepcopy(base), tok)
    learner.cfg.rl.k, learner.cfg.rl.max_new_tokens = 4, 8
    res = learner.run_once()
    v, series = _candidate(store, res)
    kls = series("rl/kl")
    assert stop_reason(v.metrics) == "kl", (v.metrics, kls)
    assert kls[-1] >= 2.0 and all(k < 2.0 for k in kls[:-1]) and len(kls) < 200


def test_rl_stops_when_the_heldout_reward_stops_rising(store, tmp_path, tiny_model_dir, embedder):
    """A reward that never changes: the held-out checks never beat the score before the first
    update, so RL stops after `rl_patience` updates; the checks' prompts are held-out requests
    and the rollouts never use them."""
    from reward.rl.budget import stop_reason

    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, rl_steps=0, rl_seconds=600.0,
                               rl_patience=2, rl_kl_stop=0.0, max_kl=1e6)
    rolled_out: list[str] = []

    def flat(prompts, texts, extras=None):
        if extras:  # an RL update (the held-out checks and the evaluation pass no extras)
            rolled_out.extend(p.prompt_text for p in prompts)
        return np.zeros(len(texts), np.float32)

    learner.reward_fn_factory = lambda rm: flat
    res = learner.run_once()
    v, series = _candidate(store, res)
    assert stop_reason(v.metrics) == "patience"
    assert v.metrics["rl/steps"] == 2 and series("rl/heldout_reward") == [0.0, 0.0]
    _prompts, _pairs, n_held, _train_pairs, _served = learner._heldout()
    held = {p.prompt_text for p in _prompts[:n_held]}
    assert held and rolled_out and not held & set(rolled_out)


def _cycle_seeing_preference_pairs(store, tmp_path, tiny_model_dir, embedder, monkeypatch, **rl):
    """One learner cycle on rated ("a long ..." over "no ...") pairs with RLConfig overrides `rl`;
    returns (learner, result, every PolicyPair the preference updates were given)."""
    import dataclasses

    from reward.rl import train as rl_train

    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, max_kl=1e6, rl_patience=0)
    learner.cfg.rl = dataclasses.replace(learner.cfg.rl, **rl)
    seen: list = []
    real = rl_train.preference_update

    def spy(policy, state, pairs, cfg):
        seen.extend(pairs)
        return real(policy, state, pairs, cfg)

    monkeypatch.setattr(rl_train, "preference_update", spy)
    return learner, learner.run_once(), seen


def test_preference_steps_learn_from_the_rated_pairs_of_requests_not_held_out(store, tmp_path, tiny_model_dir,
                                                                             embedder, monkeypatch):
    """RLConfig.pref_pairs: each RL update starts with DPO steps on the person's own pairs, drawn
    only from requests outside the held-out split (whose pairs measure agreement)."""
    learner, res, seen = _cycle_seeing_preference_pairs(store, tmp_path, tiny_model_dir, embedder, monkeypatch,
                                                         pref_pairs=4, served_pairs=0)
    v, series = _candidate(store, res)
    assert v.metrics["pref/pairs"] == 4 and len(series("pref/loss")) == 2  # one per RL update (rl_steps=2)
    _prompts, held_pairs, _n, train_pairs, _served = learner._heldout()
    assert held_pairs and train_pairs and len(seen) == 8
    held = {(q.prompt_text, q.chosen, q.rejected) for q in held_pairs}
    assert all((q.prompt_text, q.chosen, q.rejected) not in held for q in seen)
    assert all(q.chosen.startswith("a long") and q.rejected.startswith("no") for q in seen)


def test_served_pairs_come_from_the_reward_model_on_requests_not_held_out(store, tmp_path, tiny_model_dir, embedder,
                                                                          monkeypatch):
    """RLConfig.served_pairs: the preference steps also learn the cycle's reward model's best over
    worst of the candidates the other requests drew (shown and unshown), never a held-out request's."""
    learner, res, seen = _cycle_seeing_preference_pairs(store, tmp_path, tiny_model_dir, embedder, monkeypatch,
                                                         pref_pairs=0, served_pairs=3)
    v, series = _candidate(store, res)
    assert v.metrics["pref/pairs"] == 3 and len(seen) == 6
    from reward.train import load_live_reward_model

    prompts, _pairs, n_held, _train, served = learner._heldout(load_live_reward_model(store, "default", embedder))
    held = {p.prompt_text for p in prompts[:n_held]}
    assert served and {q.prompt_text for q in seen} <= {q.prompt_text for q in served}
    assert not held & {q.prompt_text for q in served}
    # the reward model learnt "long and complete" from the thumbs: served pairs say the same
    assert all(q.chosen.startswith("a long") and 0 < q.weight <= 1 for q in served)
    assert learner._heldout()[4] == []  # no reward model, no served pairs


def test_idle_cycle_trains_on_from_the_live_policy_without_new_feedback(store, tmp_path, tiny_model_dir, embedder):
    """idle_cycles=1: after a feedback-driven cycle, one more cycle runs with no new feedback: the
    live reward model (not retrained), RL from the live policy; the feedback it saw stays counted
    as before, and then the learner waits again."""
    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    # patience off: on the tiny model the held-out reward may not move in 2 steps, and a patience
    # stop ends idle cycles by design (tested on its own); this test is about the idle cycle
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, idle_cycles=1, max_kl=1e6,
                               agreement_drop=1.0, max_length_corr=1.01, reward_gain_eps=-1e9, rl_patience=0)
    first = learner.run_once()
    assert first.outcome == "published", first
    n_rm, seen = len(store.versions("default", "reward")), learner.last_feedback_id
    idle = learner.run_once()
    assert idle.metrics["learner/idle_cycle"] == 1.0 and idle.outcome == "published", idle
    v = store.get_version(idle.version_id)
    assert v.parent_id == first.version_id  # trained on from the live policy
    assert len(store.versions("default", "reward")) == n_rm and learner.last_feedback_id == seen
    assert learner.run_once().outcome == "skipped"  # the one idle cycle is spent: wait for feedback


@pytest.mark.parametrize("requires_gain", [False, True])
def test_publish_can_require_a_heldout_gain_in_every_cycle(store, tmp_path, tiny_model_dir, embedder, requires_gain):
    """A reward that never changes gives a held-out gain of exactly 0: a feedback-driven cycle
    publishes it when publish_requires_gain is off (the default), and discards it when it asks
    for a gain."""
    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, max_kl=1e6, rl_patience=0,
                               agreement_drop=1.0, max_length_corr=1.01, publish_requires_gain=requires_gain,
                               min_win_rate=0.0)
    learner.reward_fn_factory = lambda rm: (lambda prompts, texts, extras=None: np.zeros(len(texts), np.float32))
    res = learner.run_once()
    assert res.metrics["eval/reward_gain"] == 0.0
    if requires_gain:
        assert res.outcome == "discarded" and "does not beat the live version" in res.reason, res
        assert store.live_version("default", "policy") is None
    else:
        assert res.outcome == "published", res


def test_a_candidate_only_the_publish_rule_turned_down_carries_into_the_next_cycle(store, tmp_path, tiny_model_dir,
                                                                                  embedder):
    """LearnerConfig.carry_cycles: a candidate whose held-out reward does not beat the live
    version's is discarded, but the next cycle's RL starts from its weights, for at most
    carry_cycles cycles in a row; a publish drops them."""
    import dataclasses

    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, max_kl=1e6, rl_patience=0,
                               agreement_drop=1.0, max_length_corr=1.01, publish_requires_gain=True,
                               min_win_rate=0.0, carry_cycles=1)
    # a reward that never changes: no gain, so the publish rule turns every candidate down (the
    # preference steps on the rated pairs still move the weights)
    learner.reward_fn_factory = lambda rm: (lambda prompts, texts, extras=None: np.zeros(len(texts), np.float32))

    def cycle(carried_in: int, carries: bool):
        res = learner.run_once(force=True)
        assert res.outcome == "discarded" and "does not beat the live version" in res.reason, res
        assert res.metrics["learner/carried_cycles"] == carried_in
        assert store.get_version(res.version_id).config["carried_cycles"] == carried_in
        assert ("carry into the next cycle" in res.reason) == carries
        assert store.events("default", kind="discard", limit=1)[0]["reason"] == res.reason
        assert (learner.carried is not None) == carries

    cycle(0, True)  # from the live version (here the base model); 1 cycle of RL: carried
    assert learner.carried.cycles == 1 and learner.carried.live_id == 0
    model, tok = learner.lm_factory()
    policy, n = learner._start_policy(model, tok, None)  # the next cycle starts from exactly those weights
    assert n == 1
    for p, w in zip(policy.trainable_parameters(), learner.carried.weights):
        assert torch.equal(p.detach(), w)
    cycle(1, False)  # 2 cycles of RL > carry_cycles: the next one starts from the live version again
    cycle(0, True)
    learner.cfg = dataclasses.replace(learner.cfg, publish_requires_gain=False)
    assert learner.run_once(force=True).outcome == "published"
    assert learner.carried is None  # a publish drops them


def test_carry_cycles_zero_always_starts_from_the_live_version(store, tmp_path, tiny_model_dir, embedder):
    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    learner = _guarded_learner(store, tmp_path, tiny_model_dir, embedder, max_kl=1e6, rl_patience=0,
                               agreement_drop=1.0, max_length_corr=1.01, publish_requires_gain=True,
                               min_win_rate=0.0, carry_cycles=0)
    learner.reward_fn_factory = lambda rm: (lambda prompts, texts, extras=None: np.zeros(len(texts), np.float32))
    res = learner.run_once(force=True)
    assert res.outcome == "discarded" and res.metrics["learner/carried_cycles"] == 0
    assert learner.carried is None and "carry" not in res.reason


def test_rl_train_command_learns_from_the_rated_pairs_too(store, tmp_path, tiny_model_dir, capsys):
    """`inkloop rl train` on a profile with ratings: RL updates, each with its preference steps on
    the stored pairs (the learner's path, minus its held-out split), written as a version."""
    import json

    import app

    _rate_pairs(store, lambda i: (f"a long and complete reply {i}.", f"no {i}"))
    rc = app.main(["rl", "train", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path), "--steps", "1",
                   "--k", "2", "--prompts-per-step", "2", "--max-new-tokens", "6", "--pref-pairs", "3",
                   "--threads", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["pref/pairs"] == 3 and out["metrics"]["rl/steps"] == 1
    assert store.get_version(out["version"]).status == "candidate"


def test_served_score_uses_the_kappa_the_request_was_served_with():
    """A served request's drawn texts are scored with the pessimism its choice recorded (a server's
    --choice-kappa), not the default: here text 0 has the higher mean and text 1 the lower spread."""
    from types import SimpleNamespace

    from reward.loop.learner import served_score

    class TwoHeads:  # members' standardised scores: text 0 mean 1.0, spread 1.0; text 1 mean 0.8, spread 0
        def score_members(self, contexts, texts, normalize=False):
            return np.array([[0.0, 0.8], [2.0, 0.8]])

    def req(choice):
        return SimpleNamespace(mode="continue", text="x", options={"choice": choice} if choice else {}, prompt="p")

    texts = ["a", "b"]
    assert served_score(TwoHeads(), req({"kappa": 0.0}), texts) == pytest.approx([1.0, 0.8])
    assert served_score(TwoHeads(), req({"kappa": 0.5}), texts) == pytest.approx([0.5, 0.8])
    assert served_score(TwoHeads(), req(None), texts) == pytest.approx([0.0, 0.8])  # the default kappa, 1
