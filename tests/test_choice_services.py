"""Reward-guided choice through Services on the tiny model: N drawn, K shown by the profile's
reward model with one exploration slot, recorded with the request; nothing changes without one."""

from __future__ import annotations

from assistant.app.services import SuggestRequest
from reward.config import RewardTrainConfig
from reward.select import ChoiceConfig
from reward.train import save_reward_version, train_from_store


def _rate_some(services, n_requests=6):
    for i in range(n_requests):
        resp = services.suggest(SuggestRequest(mode="continue", text=f"The door opened {i} times.", k=3,
                                               max_new_tokens=8, seed=i))
        for j, s in enumerate(resp.suggestions):
            services.feedback(s["id"], "stars", 5 - 2 * j, source="simulated")


def _publish_rm(services, tmp_path, ensemble=2):
    cfg = RewardTrainConfig(epochs=3, ensemble=ensemble, shuffled_control=False, eval_frac=0.0, hidden=8)
    rm, metrics = train_from_store(services.store, "default", services.embedder, cfg)
    return save_reward_version(services.store, tmp_path, "default", rm, metrics, cfg)


def test_without_a_reward_model_nothing_changes(tiny_services):
    resp = tiny_services.suggest(SuggestRequest(mode="continue", text="It was late.", k=2, max_new_tokens=8, seed=1))
    assert resp.choice is None and len(resp.suggestions) <= 2
    assert all("score" not in s for s in resp.suggestions)
    assert "choice" not in tiny_services.store.get_request(resp.request_id).options


def test_choice_shows_the_best_k_of_n_with_one_exploration_slot(tiny_services, tmp_path):
    s = tiny_services
    _rate_some(s)
    v1 = _publish_rm(s, tmp_path)
    req = SuggestRequest(mode="continue", text="The lighthouse keeper counted the ships.", k=3, max_new_tokens=10,
                         seed=3, draw=8)
    resp = s.suggest(req)
    assert resp.choice is not None and resp.choice["reward_version"] == v1.id and resp.choice["draw"] == 8
    assert resp.choice["drawn"] > 3, resp.choice  # the one batched call drew more than K
    shown = resp.suggestions
    assert len(shown) == 3 and sum(x["exploration"] for x in shown) == 1 and shown[-1]["exploration"]
    assert shown[0]["score"] >= shown[1]["score"]  # best first by the conservative score
    opts = s.store.get_request(resp.request_id).options
    assert opts["choice"]["exploration"] == [x["exploration"] for x in shown]
    assert len(opts["choice"]["unshown"]) == resp.choice["drawn"] - 3
    # the chosen ones score at least as well as every unshown one (exploration aside)
    _, rm = s.reward_model("default")
    from reward.feedback import context_of
    from reward.select import conservative, member_scores
    ctx = context_of(s.store.get_request(resp.request_id))
    best = conservative(member_scores(rm, ctx, [x["text"] for x in shown[:2]]), 1.0)
    rest = conservative(member_scores(rm, ctx, opts["choice"]["unshown"]), 1.0)
    assert best.min() >= rest.max() - 1e-5
    # off per request, and K >= N: no choice
    assert s.suggest(SuggestRequest(**{**req.__dict__, "choice": False})).choice is None
    assert s.suggest(SuggestRequest(**{**req.__dict__, "draw": 3})).choice is None
    # a newer reward version is picked up on the next request
    v2 = _publish_rm(s, tmp_path, ensemble=1)
    r2 = s.suggest(req)
    assert r2.choice["reward_version"] == v2.id and r2.choice["members"] == 1
    # the streamed path applies the same choice
    final = list(s.suggest_stream(req))[-1]
    assert final.choice["reward_version"] == v2.id and sum(x["exploration"] for x in final.suggestions) == 1


def test_choice_can_be_off_by_default(tiny_services, tmp_path):
    s = tiny_services
    _rate_some(s, 4)
    _publish_rm(s, tmp_path)
    s.choice = ChoiceConfig(enabled=False)
    req = SuggestRequest(mode="continue", text="Snow fell.", k=2, max_new_tokens=8, seed=1)
    assert s.suggest(req).choice is None
    assert s.suggest(SuggestRequest(**{**req.__dict__, "choice": True})).choice is not None


def test_api_takes_draw_and_choice_and_says_which_slot_explores(tiny_services, tmp_path):
    from fastapi.testclient import TestClient

    from assistant.app.api.routes import build_api

    _rate_some(tiny_services, 4)
    v = _publish_rm(tiny_services, tmp_path)
    body = {"mode": "continue", "text": "The kettle sang.", "k": 2, "max_new_tokens": 8, "seed": 2, "draw": 6}
    with TestClient(build_api(tiny_services)) as c:
        r = c.post("/api/v1/suggest", json=body).json()
        assert r["choice"]["reward_version"] == v.id and r["choice"]["draw"] == 6
        assert [s["exploration"] for s in r["suggestions"]] == [False, True]
        assert all(isinstance(s["score"], float) for s in r["suggestions"])
        off = c.post("/api/v1/suggest", json={**body, "choice": False}).json()
        assert off["choice"] is None and off["suggestions"][0]["score"] is None
        assert c.post("/api/v1/suggest", json={**body, "draw": 99}).status_code == 422


def test_ui_settings_reach_the_request_and_the_info_line_names_the_exploration_slot(tiny_services, tmp_path):
    import gradio as gr

    from assistant.app.ui import writer as ui

    _rate_some(tiny_services, 4)
    v = _publish_rm(tiny_services, tmp_path)
    demo = ui.build_ui(tiny_services)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"draw", "choice"} <= ids and isinstance(demo, gr.Blocks)
    outs = list(ui.suggest_continue(tiny_services, "default", "The kettle sang.", None, 2, 0.8, 0.95, 8, "4",
                                    False, 6, True))
    info = outs[-1][4 * ui.MAX_K + 1]
    assert f"chosen by reward model v{v.id}" in info and "#2 is the exploration slot" in info
    outs = list(ui.suggest_continue(tiny_services, "default", "The kettle sang.", None, 2, 0.8, 0.95, 8, "4",
                                    False, 6, False))
    assert "reward model" not in outs[-1][4 * ui.MAX_K + 1]


def test_generator_draws_n_rows_in_one_batched_call(tiny_lm, monkeypatch):
    import assistant.lm.generate as G
    from assistant.lm.config import GenerationSettings
    from assistant.lm.prompts import build_prompt

    calls = []
    real = G.sample

    def counting(model, tok, prompt_texts, gen, **kw):
        calls.append(len(prompt_texts))
        return real(model, tok, prompt_texts, gen, **kw)

    monkeypatch.setattr(G, "sample", counting)
    model, tok = tiny_lm
    p = build_prompt("continue", "The rain fell.", {})
    res = G.Generator(model, tok).suggest(p, "The rain fell.", GenerationSettings(k=2, draw=6, seed=3, max_new_tokens=8))
    assert calls[0] == 6 and 2 <= len(res.texts) <= 6  # N rows in the first call; all distinct ones back
    calls.clear()
    res = G.Generator(model, tok).suggest(p, "The rain fell.", GenerationSettings(k=2, seed=3, max_new_tokens=8))
    assert calls[0] == 2 and len(res.texts) <= 2  # draw 0: exactly K, as before
