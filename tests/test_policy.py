"""The actor-critic update on a tiny random Llama: what changes, what must not, and that it learns."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from assistant.lm.tiny import build_tiny_lm
from reward.functions import RolloutPrompt
from reward.rl.config import RLConfig
from reward.rl.policy import VALUE_HEAD_FILE, Policy
from reward.rl.step import TrainerState, rl_step
from reward.rl.train import train_policy

torch.set_num_threads(1)


def _prompts(tok, n=2):
    asks = ["Write a story.", "Give one idea.", "Rewrite the passage."][:n]
    return [
        RolloutPrompt(tok.apply_chat_template([{"role": "user", "content": a}], tokenize=False, add_generation_prompt=True), "continue")
        for a in asks
    ]


def _peaky_tiny(tok):
    """A tiny model whose next-token distribution is not flat: with tied embeddings of std 0.02
    the logits of a hidden-32 model can hardly move, so scale the embeddings up."""
    model, tok = build_tiny_lm(seed=0, tokenizer=tok)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8.0)
    return model


def _cfg(algo, **kw):
    base = dict(algo=algo, k=8, prompts_per_step=2, max_new_tokens=8, clean_texts=False, seed=0, lr=1e-2,
                temperature=1.0, kl_coef=0.0, minibatch_size=8)
    base.update(kw)
    return RLConfig(**base)


def _first_token_prob(policy, prompts, token):
    tok = policy.tokenizer
    enc = tok([p.prompt_text for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits, _ = policy.forward(enc["input_ids"], enc["attention_mask"], 1, 1.0)
    return torch.softmax(logits[:, -1], -1)[:, token].mean().item()


def length_reward(ps, texts, extras=None):
    return np.asarray([len(ids) for ids in extras["response_ids"]], np.float32)


def test_only_lora_and_value_head_change(tiny_lm):
    model, tok = tiny_lm
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    pol = Policy.from_base(model, tok)
    st = TrainerState()
    lora_before = {n: p.detach().clone() for n, p in pol.model.named_parameters() if p.requires_grad}
    head_before = pol.value_head.weight.detach().clone()
    assert lora_before and all("lora_" in n for n in lora_before)
    for _ in range(2):
        m = rl_step(pol, st, _prompts(tok), lambda ps, ts: np.random.default_rng(0).normal(size=len(ts)), _cfg("ppo", k=4))
    assert m["rl/skipped"] == 0
    # base weights: bit-identical
    for name, p in pol.model.get_base_model().named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(p, base_before[key]), name
        assert not p.requires_grad
    changed = [n for n, p in pol.model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert changed, "no LoRA weight moved"
    assert not torch.equal(pol.value_head.weight, head_before)


def test_kl_is_zero_before_first_update(tiny_lm):
    model, tok = tiny_lm
    pol = Policy.from_base(model, tok)
    st = TrainerState()
    m = rl_step(pol, st, _prompts(tok), lambda ps, ts: np.ones(len(ts)), _cfg("a2c", k=2))
    assert m["rl/kl"] == 0.0  # the fresh adapter (B = 0) is the reference
    assert m["rl/ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("algo, extra", [("reinforce", {}), ("a2c", {}), ("ppo", {}), ("distill", {}),
                                         ("ppo", {"distill_coef": 0.1})],
                         ids=["reinforce", "a2c", "ppo", "distill", "ppo+distill"])
def test_favoured_token_probability_rises(tiny_tokenizer, algo, extra):
    """A reward that favours one token: every algorithm (best-of-N distillation and the mix too)
    raises that token's probability well above where it started."""
    tok = tiny_tokenizer
    model = _peaky_tiny(tok)
    pol = Policy.from_base(model, tok)
    st = TrainerState()
    prompts = _prompts(tok)
    enc = tok([p.prompt_text for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits[:, -1], -1).mean(0)
    target = int(probs.argsort(descending=True)[8])  # a plausible but unlikely token (p ~ 0.01)

    def favour(ps, texts, extras=None):
        return np.asarray([sum(t == target for t in ids) / len(ids) for ids in extras["response_ids"]], np.float32)

    before = _first_token_prob(pol, prompts, target)
    for _ in range(6):
        m = rl_step(pol, st, prompts, favour, _cfg(algo, **extra))
        if algo == "distill" or extra:
            assert m["rl/distilled"] <= 2 and m["rl/distill_score_gain"] >= 0  # at most the best of each prompt
    after = _first_token_prob(pol, prompts, target)
    assert after > 3 * before, (before, after)


def test_distill_learns_nothing_from_a_reward_that_ties(tiny_lm):
    """Best-of-N distillation keeps only samples above their prompt's mean: when every sample
    scores the same there is no best, nothing is imitated and the weights stay as they were."""
    model, tok = tiny_lm
    pol = Policy.from_base(model, tok)
    st = TrainerState()
    before = [p.detach().clone() for p in pol.trainable_parameters()]
    m = rl_step(pol, st, _prompts(tok), lambda ps, ts: np.ones(len(ts)), _cfg("distill", k=4))
    assert m["rl/distilled"] == 0 and m["rl/skipped"] == 0 and st.steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, pol.trainable_parameters()))
    # without the margin the top sample of each prompt is imitated: the adapter moves
    m = rl_step(pol, st, _prompts(tok), lambda ps, ts: np.ones(len(ts)), _cfg("distill", k=4, distill_margin=None))
    assert m["rl/distilled"] == 2 and m["rl/distill_nll"] > 0
    assert not all(torch.equal(a, b) for a, b in zip(before, pol.trainable_parameters()))
    with pytest.raises(ValueError, match="k >= 2"):
        _cfg("distill", k=1).validate()


@pytest.mark.parametrize("field,value", [("lr", -1.0), ("lr", 0.0), ("lr", float("nan")), ("value_lr", -1e-3),
                                         ("temperature", 0.0), ("top_p", 0.0), ("kl_coef", -0.1), ("clip", 0.0)])
def test_rl_config_rejects_settings_that_cannot_train(field, value):
    """A negative learning rate would climb the loss (gradient ascent) without a word: refused."""
    from reward.rl.config import RLConfig

    with pytest.raises(ValueError, match=field):
        RLConfig(**{field: value}).validate()
    RLConfig().validate()  # the defaults are valid


def test_save_load_identical_logits_and_values(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    model, _ = build_tiny_lm(seed=0, tokenizer=tok)
    pol = Policy.from_base(model, tok)
    st = TrainerState()
    prompts = _prompts(tok)
    rl_step(pol, st, prompts, length_reward, _cfg("ppo", k=4))
    pol.save(tmp_path / "v")
    assert (tmp_path / "v" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "v" / VALUE_HEAD_FILE).exists()
    fresh, _ = build_tiny_lm(seed=0, tokenizer=tok)
    loaded = Policy.load(fresh, tok, tmp_path / "v")
    enc = tok([p.prompt_text for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    n = 5
    with torch.no_grad():
        la, va = pol.forward(enc["input_ids"], enc["attention_mask"], n, 1.0)
        lb, vb = loaded.forward(enc["input_ids"], enc["attention_mask"], n, 1.0)
    assert torch.equal(la, lb)
    assert torch.equal(va, vb)
    assert va.abs().sum() > 0  # the critic was trained, so this is not comparing zeros
    # the adapter really changes the model (vs the reference)
    with torch.no_grad(), loaded.model.disable_adapter():
        lr_, _ = loaded.forward(enc["input_ids"], enc["attention_mask"], n, 1.0)
    assert not torch.equal(la, lr_)


def test_shared_prefix_forward_matches_full_forward(tiny_tokenizer):
    """Running each distinct prompt once and fanning its cache out to the K samples gives the same
    logits, values and LoRA/value-head gradients as running every prompt+response in full."""
    tok = tiny_tokenizer
    pol = Policy.from_base(_peaky_tiny(tok), tok)
    st = TrainerState()
    prompts = _prompts(tok, 3)  # three prompts of different lengths: left padding differs per group
    rl_step(pol, st, prompts, length_reward, _cfg("ppo", k=4, prompts_per_step=3))  # non-zero LoRA B
    ro = st.last_rollout
    ids, am, m = ro.input_ids.clone(), ro.attention_mask.clone(), ro.mask.clone()
    for row, n in ((0, 3), (5, 5)):  # responses that ended early: padding after the EOS, as rollout() leaves it
        ids[row, -n:] = tok.pad_token_id
        am[row, -n:] = 0
        m[row, -n:] = 0

    def run(share):
        pol.model.zero_grad(set_to_none=True)
        pol.value_head.zero_grad(set_to_none=True)
        logits, values = pol.forward(ids, am, ro.n_resp, 1.0, autocast=False, share_prefix=share)  # fp32: exact
        (((torch.log_softmax(logits, -1).amax(-1) + values) * m).sum()).backward()
        grads = {n: p.grad.clone() for n, p in pol.model.named_parameters() if p.requires_grad}
        grads["value_head"] = pol.value_head.weight.grad.clone()
        return logits.detach() * m[..., None], values.detach() * m, grads

    la, va, ga = run(True)
    lb, vb, gb = run(False)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-4)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4, msg=n)


def test_load_refuses_missing_value_head(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    model, _ = build_tiny_lm(seed=0, tokenizer=tok)
    pol = Policy.from_base(model, tok)
    pol.save(tmp_path / "v")
    (tmp_path / "v" / VALUE_HEAD_FILE).unlink()
    fresh, _ = build_tiny_lm(seed=0, tokenizer=tok)
    with pytest.raises(FileNotFoundError, match="value_head"):
        Policy.load(fresh, tok, tmp_path / "v")


def test_non_finite_reward_skips_update(tiny_lm):
    model, tok = tiny_lm
    pol = Policy.from_base(model, tok)
    st = TrainerState()
    before = [p.detach().clone() for p in pol.trainable_parameters()]
    m = rl_step(pol, st, _prompts(tok), lambda ps, ts: np.full(len(ts), np.nan), _cfg("ppo", k=2))
    assert m["rl/skipped"] == 1 and m["rl/skip_reason"] == "non-finite reward"
    assert all(torch.equal(a, b) for a, b in zip(before, pol.trainable_parameters()))


def test_bf16_base_keeps_fp32_adapter(tiny_tokenizer):
    tok = tiny_tokenizer
    model, _ = build_tiny_lm(seed=0, tokenizer=tok)
    model.to(torch.bfloat16)
    pol = Policy.from_base(model, tok)
    st = TrainerState()
    assert {p.dtype for p in pol.trainable_parameters()} == {torch.float32}
    m = rl_step(pol, st, _prompts(tok), length_reward, _cfg("a2c", k=2))
    assert m["rl/skipped"] == 0 and np.isfinite(m["rl/value_loss"])
    assert {p.dtype for p in pol.trainable_parameters()} == {torch.float32}


def test_train_policy_writes_a_version_from_recent_requests(tiny_lm, store, tmp_path):
    model, tok = tiny_lm
    for mode, text in [("continue", "The rain fell."), ("restyle", "It was cold."), ("inspire", "sea")]:
        p = _prompts(tok, 1)[0].prompt_text
        store.record_request(profile_id="ann", mode=mode, text=text, options={"style": "vivid", "keywords": ["sea"]},
                             prompt=p, policy_version=0, suggestions=["a", "b"])
    cfg = RLConfig(algo="reinforce", k=2, prompts_per_step=3, max_new_tokens=6, seed=1)
    version, metrics = train_policy(store, tmp_path, "ann", model, tok, length_reward, cfg, steps=2, publish=True)
    assert store.live_version("ann", "policy").id == version.id
    vdir = tmp_path / "versions" / "ann"
    (d,) = list(vdir.iterdir())
    assert {x.name for x in d.iterdir()} >= {"adapter", VALUE_HEAD_FILE, "metrics.json", "config.json"}
    saved = json.loads((d / "metrics.json").read_text())
    assert saved["rl/steps"] == 2 and "rl/kl" in saved and "rl/episodes_per_s" in saved
    assert json.loads((d / "config.json").read_text())["rl"]["algo"] == "reinforce"
    assert len(store.metric_series("rl/reward", version.id)) >= 2
    # no requests -> a clear error
    fresh, _ = build_tiny_lm(seed=0, tokenizer=tok)
    with pytest.raises(ValueError, match="no requests"):
        train_policy(store, tmp_path, "nobody", fresh, tok, length_reward, cfg, steps=1)


@pytest.mark.integration
def test_real_smollm2_bf16_update(real_lm):
    """The bundled SmolLM2 loads in bf16 on CPUs with fast bf16: the adapter and critic stay fp32,
    KL starts at 0, one a2c step is finite and moves only the adapter; the base is restored after."""
    import copy

    from assistant.lm.prompts import build_prompt, render

    model = copy.deepcopy(real_lm.model)
    tok = real_lm.tokenizer
    pol = Policy.from_base(model, tok)
    st = TrainerState()
    assert {p.dtype for p in pol.trainable_parameters()} == {torch.float32}
    p = RolloutPrompt(render(build_prompt("continue", "The rain had not stopped for three days."), tok), "continue",
                      source_text="The rain had not stopped for three days.")
    cfg = RLConfig(algo="a2c", k=2, prompts_per_step=1, max_new_tokens=6, seed=0)
    m = rl_step(pol, st, [p], length_reward, cfg)
    assert m["rl/kl"] == 0.0 and m["rl/skipped"] == 0 and np.isfinite(m["rl/value_loss"])
    m2 = rl_step(pol, st, [p], length_reward, cfg)
    assert np.isfinite(m2["rl/kl"]) and m2["rl/skipped"] == 0


def _seq_logp(policy, pairs, rows):
    from reward.rl.preference import encode_pairs

    ids, att, mask = encode_pairs(policy.tokenizer, pairs, 16)
    with torch.no_grad():
        logits, _ = policy.forward(ids, att, mask.shape[1], 1.0)
    from assistant.lm.logprobs import token_logprobs

    return (token_logprobs(logits, ids[:, -mask.shape[1]:]) * mask).sum(1)[rows]


def test_preference_update_raises_the_chosen_reply_over_the_rejected(tiny_tokenizer):
    """DPO on the person's pairs: after a few steps the policy's log-ratio to the reference of the
    chosen reply exceeds the rejected one's (it starts at 0: the fresh adapter is the reference);
    pairs that cannot teach (empty or equal replies, zero weight) are dropped."""
    from reward.rl.preference import PolicyPair, encode_pairs, preference_update

    tok = tiny_tokenizer
    pol = Policy.from_base(_peaky_tiny(tok), tok)
    p = _prompts(tok, 2)
    pairs = [PolicyPair(p[0].prompt_text, "the sea was calm", "a dog ran off"),
             PolicyPair(p[1].prompt_text, "one bright idea", "nothing at all here")]
    junk = [PolicyPair(p[0].prompt_text, "same", "same"), PolicyPair(p[0].prompt_text, "", "x"),
            PolicyPair(p[1].prompt_text, "a", "b", weight=0.0)]
    # layout: two rows per pair, prompt left-padded, reply right-padded under the response mask
    ids, att, mask = encode_pairs(tok, pairs, 16)
    assert ids.shape[0] == 4 and mask.shape[1] == max(len(tok(t, add_special_tokens=False)["input_ids"])
                                                      for q in pairs for t in (q.chosen, q.rejected))
    assert mask[1].sum() == len(tok("a dog ran off", add_special_tokens=False)["input_ids"])
    cfg = RLConfig(lr=1e-2, pref_pairs=8, pref_epochs=3, pref_beta=0.5, minibatch_size=2)
    before = _seq_logp(pol, pairs, slice(None))
    st = TrainerState()
    m = preference_update(pol, st, pairs + junk, cfg)
    after = _seq_logp(pol, pairs, slice(None))
    gain = after - before  # log pi - log ref, since pi = ref before the update
    assert m["pref/pairs"] == 2 and m["pref/accuracy_start"] == 0.0
    assert m["pref/loss_start"] == pytest.approx(np.log(2), abs=1e-5)
    assert m["pref/loss"] < m["pref/loss_start"]
    assert gain[0] - gain[1] > 0 and gain[2] - gain[3] > 0
    # the reference's log-probs are kept: the same replies again need no reference pass
    assert len(st.ref_logp) == 4
    chosen = {(q.prompt_text, q.chosen, cfg.max_new_tokens) for q in pairs}
    st.ref_logp = {k: v + 1.0 * (k in chosen) for k, v in st.ref_logp.items()}  # shifted: what is read
    m2 = preference_update(pol, st, pairs, dataclasses.replace(cfg, pref_epochs=1))
    expect = float((gain[0] - gain[1] + gain[2] - gain[3]) / 2) - 1.0
    assert m2["pref/margin_start"] == pytest.approx(expect, abs=1e-3)
    assert preference_update(pol, st, junk, cfg) == {}


def test_train_policy_runs_a_preference_update_before_each_rl_update(tiny_lm, store, tmp_path):
    from reward.rl.preference import PolicyPair

    model, tok = tiny_lm
    p = _prompts(tok, 1)[0].prompt_text
    store.record_request(profile_id="ann", mode="continue", text="The rain fell.", options={}, prompt=p,
                         policy_version=0, suggestions=["a", "b"])
    pairs = [PolicyPair(p, "the rain stopped", "it went on and on")] * 3
    cfg = RLConfig(algo="reinforce", k=2, prompts_per_step=1, max_new_tokens=6, seed=1, pref_pairs=2)
    _v, metrics = train_policy(store, tmp_path, "ann", model, tok, length_reward, cfg, steps=2, pairs=pairs)
    assert metrics["pref/pairs"] == 2 and metrics["rl/steps"] == 2
    assert len(store.metric_series("pref/loss", _v.id)) == 3  # the summary (step 0) and each update


def test_served_pairs_take_the_reward_models_best_over_worst_of_every_drawn_candidate(store):
    """served_pairs: per request, the best over the worst of all it drew (shown + drawn but not
    shown) by the score; the weight is the gap, capped at 1; a request the scores cannot split,
    one without a prompt and one with a single candidate give none."""
    from reward.rl.train import served_pairs

    def req(texts, unshown=(), prompt="P"):
        r = store.record_request(profile_id="ann", mode="continue", text="x", prompt=prompt, policy_version=0,
                                 options={"choice": {"unshown": list(unshown)}} if unshown else {},
                                 suggestions=list(texts))
        return store.get_request(r.id)

    reqs = [req(["aa", "b"], unshown=["cccc", "dd", ""]), req(["eeeeee", "ff"]), req(["gg", "hh"]),
            req(["ii", "j"], prompt=""), req(["kk"])]
    score = {"aa": 0.0, "b": 0.1, "cccc": 2.0, "dd": -0.5, "eeeeee": 0.3, "ff": 0.1, "gg": 1.0, "hh": 1.0,
             "ii": 5.0, "j": 0.0, "kk": 1.0}
    seen = []

    def fn(r, texts):
        seen.append(texts)
        return [score[t] for t in texts]

    out = served_pairs(reqs, fn)
    assert [(p.chosen, p.rejected) for p in out] == [("cccc", "dd"), ("eeeeee", "ff")]
    assert [p.weight for p in out] == [1.0, pytest.approx(0.2)]  # gap 2.5 capped at 1; gap 0.2
    assert all(p.prompt_text == "P" for p in out)
    assert seen[0] == ["aa", "b", "cccc", "dd"]  # empty draws dropped, shown first
    assert served_pairs(reqs, fn, min_gap=0.5) == out[:1]


def test_train_policy_mixes_served_pairs_into_each_preference_update(tiny_lm, store, tmp_path, monkeypatch):
    from reward.rl import train as rl_train
    from reward.rl.preference import PolicyPair

    model, tok = tiny_lm
    p = _prompts(tok, 1)[0].prompt_text
    store.record_request(profile_id="ann", mode="continue", text="The rain fell.", options={}, prompt=p,
                         policy_version=0, suggestions=["a", "b"])
    rated = [PolicyPair(p, "the rain stopped", "it went on and on")] * 3
    served = [PolicyPair(p, "a short bright line", "a long grey line that rambles", 0.5)] * 5
    seen: list = []
    real = rl_train.preference_update
    monkeypatch.setattr(rl_train, "preference_update", lambda pol, st, pairs, cfg: seen.append(pairs) or real(pol, st, pairs, cfg))
    cfg = RLConfig(algo="reinforce", k=2, prompts_per_step=1, max_new_tokens=6, seed=1, pref_pairs=2, served_pairs=3)
    clean = copy.deepcopy(model)  # peft wraps the model it trains
    _v, metrics = train_policy(store, tmp_path, "ann", model, tok, length_reward, cfg, steps=2, pairs=rated,
                               served=served)
    assert metrics["pref/pairs"] == 5 and len(seen) == 2
    assert all(sum(q in rated for q in b) == 2 and sum(q in served for q in b) == 3 for b in seen)
    seen.clear()
    train_policy(store, tmp_path, "ann", clean, tok, length_reward, dataclasses.replace(cfg, served_pairs=0),
                 steps=1, pairs=rated, served=served)
    assert [len(b) for b in seen] == [2]
