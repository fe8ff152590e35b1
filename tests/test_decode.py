"""The fast decode path (assistant.lm.decode): sampling rules on hand-made logits, token-for-token
identity with transformers' generate (base model and LoRA adapter, left-padded and shared
prompts, EOS and per-row stop rules), the Generator's use of it, and hot-swapping an adapter
without recompiling."""

from __future__ import annotations

import math
import time

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from assistant.lm.adapters import ADAPTER_SUBDIR
from assistant.lm.config import GenerationSettings
from assistant.lm.decode import (
    DecodeSettings,
    FastDecoder,
    Sampling,
    Slots,
    choose_next,
    choose_next_topk,
    decode_attention,
    decode_step,
    install_decode_attention,
    model_key,
    pick_bucket,
    run_decode,
)
from assistant.lm.generate import Generator
from assistant.lm.prompts import build_prompt

T = lambda v: torch.tensor(float(v))  # noqa: E731


# ----------------------------------------------------------------------------- pure sampling rules
def test_choose_next_applies_the_penalty_then_greedy():
    logits = torch.tensor([[2.0, 3.0, 0.0, -1.0]])
    seen = torch.tensor([[False, True, False, True]])
    # penalty 2: seen 3.0 -> 1.5 (positive: divided), seen -1 -> -2 (negative: multiplied); 2.0 wins
    assert choose_next(logits, seen, T(0), T(1), T(2.0), torch.ones(1, 4)).tolist() == [0]
    # penalty 1.2: 3.0 / 1.2 = 2.5 still beats 2.0
    assert choose_next(logits, seen, T(0), T(1), T(1.2), torch.ones(1, 4)).tolist() == [1]


def test_choose_next_top_p_keeps_the_nucleus_only():
    # probabilities about 0.66, 0.24, 0.09, 0.01: top_p 0.5 keeps token 0 only, whatever the noise
    logits = torch.tensor([[3.0, 2.0, 1.0, -1.0]])
    seen = torch.zeros(1, 4, dtype=torch.bool)
    for _ in range(20):
        noise = torch.empty(1, 4).exponential_()
        assert choose_next(logits, seen, T(1.0), T(0.5), T(1.0), noise).tolist() == [0]
    # top_p 0.8: the nucleus is {0, 1} (0.66 < 0.8 <= 0.90); the smallest two never come out
    picks = {choose_next(logits, seen, T(1.0), T(0.8), T(1.0), torch.empty(1, 4).exponential_()).item()
             for _ in range(200)}
    assert picks == {0, 1}


def test_choose_next_samples_with_the_softmax_distribution():
    """The exponential race picks token i with probability softmax(logits / temperature)_i."""
    torch.manual_seed(0)
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    temp = 0.7
    n = 20000
    rows = logits.expand(n, -1)
    picks = choose_next(rows, torch.zeros(n, 4, dtype=torch.bool), T(temp), T(1.0), T(1.0),
                        torch.empty(n, 4).exponential_())
    freq = torch.bincount(picks, minlength=4).float() / n
    want = torch.softmax(logits / temp, -1)
    assert torch.allclose(freq, want, atol=4 * math.sqrt(0.25 / n) + 1e-3), (freq, want)


def test_top_k_draw_is_exact_when_the_candidates_hold_the_nucleus():
    torch.manual_seed(1)
    logits = torch.tensor([[4.0, 3.0, 1.0, 0.0, -2.0, -3.0]])
    seen = torch.tensor([[False, False, True, False, False, False]])
    args = (seen, T(0.9), T(0.8), T(1.3))
    # 3 candidates hold more than 0.8 of the mass: exact, and only nucleus tokens come out
    n = 20000
    rows = logits.expand(n, -1)
    fast, exact = choose_next_topk(rows, seen.expand(n, -1), *args[1:], torch.empty(n, 3).exponential_())
    assert bool(exact.all())
    full = choose_next(rows, seen.expand(n, -1), *args[1:], torch.empty(n, 6).exponential_())
    f1, f2 = (torch.bincount(x, minlength=6).float() / n for x in (fast, full))
    assert set(fast.unique().tolist()) == set(full.unique().tolist()) == {0, 1}
    assert torch.allclose(f1, f2, atol=0.02), (f1, f2)
    # 1 candidate cannot hold 0.8: not exact (the caller then uses choose_next)
    _, exact = choose_next_topk(logits, *args, torch.ones(1, 1))
    assert exact.tolist() == [False]
    # greedy is always exact and is the penalised argmax
    tok, exact = choose_next_topk(logits, seen, T(0), T(0.8), T(1.3), torch.ones(1, 1))
    assert exact.tolist() == [True] and tok.tolist() == [0]


def test_decode_attention_equals_sdpa():
    """The decode step's attention (q_len 1, GQA, padding mask) against transformers' sdpa."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    q = torch.randn(3, 6, 1, 8)
    k, v = torch.randn(3, 2, 10, 8), torch.randn(3, 2, 10, 8)
    mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., :4] = False  # left padding
    mask[:, ..., 8:] = False  # slots not written yet
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=8 ** -0.5)
    got, _ = decode_attention(module, q, k, v, mask, scaling=8 ** -0.5, inkloop_decode=True)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    compiled = torch.compile(decode_attention, backend="aot_eager", fullgraph=True)
    got_c, _ = compiled(module, q, k, v, mask, scaling=8 ** -0.5, inkloop_decode=True)  # the reduction form
    torch.testing.assert_close(got_c, ref, atol=1e-5, rtol=1e-5)


def test_pick_bucket():
    assert pick_bucket(3, (4, 8, 16)) == 4
    assert pick_bucket(8, (16, 4, 8)) == 8
    assert pick_bucket(17, (4, 8, 16)) is None


# ----------------------------------------------------------------------------- identity with generate
PROMPTS = ["The rain had not stopped", "She opened the door and the cold wind rushed in", "A lighthouse"]


def _enc(tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def _reference(model, tok, ids, att, max_new, penalty, eos=None, stops=None):
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new, do_sample=False,
                             repetition_penalty=penalty, pad_token_id=tok.pad_token_id,
                             eos_token_id=eos if eos is not None else model.generation_config.eos_token_id,
                             stopping_criteria=stops)
    return out[:, ids.shape[1]:]


def _fast(model, tok, ids, att, max_new, penalty, eos=None, row_done=None, rows=4, check_every=4):
    eos_ids = [eos if eos is not None else model.generation_config.eos_token_id]
    sp = Sampling.make(0.0, 1.0, penalty, eos_ids, tok.pad_token_id, ids.device)
    assert install_decode_attention(model)
    with torch.no_grad():
        return run_decode(decode_step, model, Slots(model, rows, 64), ids, att, max_new, sp, row_done,
                          check_every=check_every)


@pytest.mark.parametrize("penalty", [1.0, 1.3, 5.0])
def test_greedy_matches_generate_on_a_left_padded_batch(tiny_lm, penalty):
    model, tok = tiny_lm
    ids, att = _enc(tok, PROMPTS)
    assert not bool(att.all())  # really padded
    ref = _reference(model, tok, ids, att, 20, penalty)
    assert torch.equal(_fast(model, tok, ids, att, 20, penalty), ref)


def test_greedy_matches_generate_on_a_shared_prompt_fanned_out(tiny_lm):
    model, tok = tiny_lm
    ids, att = _enc(tok, PROMPTS[1:2])
    ids, att = ids.expand(3, -1), att.expand(3, -1)  # K rows of one prompt: one prefill, copied
    ref = _reference(model, tok, ids, att, 24, 1.3)
    assert torch.equal(_fast(model, tok, ids, att, 24, 1.3, rows=8), ref)


def _common_token(model, tok, ids, att):
    """A token the greedy model writes early in some rows: used as EOS to make rows stop."""
    free = _reference(model, tok, ids, att, 12, 1.3, eos=-1)
    counts = torch.bincount(free[:, 2:8].flatten())
    return int(counts.argmax())


def test_eos_stops_rows_pads_them_and_ends_early(tiny_lm):
    model, tok = tiny_lm
    ids, att = _enc(tok, PROMPTS)
    eos = _common_token(model, tok, ids, att)
    ref = _reference(model, tok, ids, att, 30, 1.3, eos=eos)
    got = _fast(model, tok, ids, att, 30, 1.3, eos=eos)
    assert torch.equal(got, ref)
    assert (got == eos).any()  # some row did stop on it


class _RowRule(StoppingCriteria):
    """A per-row rule in both forms, like generate.ParagraphStop: stop after `token` once the row
    has written at least `min_tokens`."""

    def __init__(self, prompt_len, token, min_tokens):
        self.prompt_len, self.token, self.min_tokens = prompt_len, token, min_tokens

    def row_done(self, new):
        return len(new) >= self.min_tokens and new[-1] == self.token

    def __call__(self, input_ids, scores, **kwargs):
        return torch.tensor([self.row_done(r) for r in input_ids[:, self.prompt_len:].tolist()])


@pytest.mark.parametrize("check_every", [1, 4, 7])
def test_a_row_stop_rule_checked_every_few_steps_gives_generates_output(tiny_lm, check_every):
    """The stop rule runs on the host every few steps and is applied at the step it fired."""
    model, tok = tiny_lm
    ids, att = _enc(tok, PROMPTS)
    rule = _RowRule(ids.shape[1], _common_token(model, tok, ids, att), min_tokens=3)
    ref = _reference(model, tok, ids, att, 30, 1.3, eos=-1, stops=StoppingCriteriaList([rule]))
    got = _fast(model, tok, ids, att, 30, 1.3, eos=-1, row_done=rule.row_done, check_every=check_every)
    assert torch.equal(got, ref)
    assert got.shape[1] < 30 or (got == tok.pad_token_id).any()  # the rule did stop rows


def _random_adapter(model, seed=0, scale=1.0):
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return pm.eval()


def test_greedy_matches_generate_through_a_lora_adapter(tiny_lm):
    model, tok = tiny_lm
    ids, att = _enc(tok, PROMPTS)
    base = _reference(model, tok, ids, att, 20, 1.3)
    pm = _random_adapter(model)
    ref = _reference(pm, tok, ids, att, 20, 1.3)
    assert not torch.equal(ref, base)  # the adapter matters
    assert torch.equal(_fast(pm, tok, ids, att, 20, 1.3), ref)


# ----------------------------------------------------------------------------- the Generator
def _greedy(**kw):
    return GenerationSettings(k=3, temperature=0.0, max_new_tokens=12, repetition_penalty=5.0, **kw)


def test_generator_fast_path_gives_the_same_suggestions(tiny_lm):
    model, tok = tiny_lm
    plain = Generator(model, tok)
    fast = Generator(model, tok)
    fast.start_fast_path(DecodeSettings(compile=False))
    calls = []
    real = fast.fast.decode
    fast.fast.decode = lambda *a, **k: calls.append(1) or real(*a, **k)
    for mode, text, opts in [("continue", "The storm is coming.", {}),
                             ("restyle", "I am tired.", {"style": "formal"})]:
        p = build_prompt(mode, text, opts)
        for gen in (_greedy(), _greedy(variety=True)):
            assert fast.suggest(p, text, gen).raw == plain.suggest(p, text, gen).raw
    assert len(calls) == 4  # every request went through the fast path
    # turned off per request: generate serves
    fast.suggest(build_prompt("continue", "x y z."), "x y z.", _greedy(fast_path=False))
    assert len(calls) == 4


def test_generator_fast_path_samples_reproducibly_and_streams(tiny_lm):
    model, tok = tiny_lm
    g = Generator(model, tok)
    g.start_fast_path(DecodeSettings(compile=False, top_k=4))  # 4 candidates: many rows take the full draw
    p = build_prompt("continue", "She opened the door.")
    gen = lambda s: GenerationSettings(k=4, seed=s, max_new_tokens=16, temperature=1.0)  # noqa: E731
    a, b, c = (g.suggest(p, "She opened the door.", gen(s)).raw for s in (7, 7, 8))
    assert a == b and a != c
    assert len(set(a)) > 1  # rows are sampled independently
    events = list(g.stream(p, "She opened the door.", gen(1)))
    partials = [e.partial for e in events[:-1]]
    assert events[-1].done and len(partials) >= 3
    lengths = [sum(len(t) for t in e) for e in partials]
    assert max(lengths[:2]) < max(lengths)


def test_unready_bucket_falls_back_and_is_queued(tiny_lm):
    model, tok = tiny_lm
    fd = FastDecoder(DecodeSettings(backend="eager", warmup=(), after_first_request=False))
    ids, att = _enc(tok, PROMPTS)
    sp = Sampling.make(0.0, 1.0, 1.3, [tok.eos_token_id], tok.pad_token_id, "cpu")
    key = model_key(model)
    assert fd.decode(key, model, ids, att, 10, sp) is None  # not compiled yet: the caller uses generate
    assert fd.wait_ready(key, 4, 256, timeout=120)  # ... and the background thread compiled it
    assert torch.equal(fd.decode(key, model, ids, att, 10, sp), _reference(model, tok, ids, att, 10, 1.3))
    too_long = torch.ones(1, 4000, dtype=torch.long)
    assert fd.decode(key, model, too_long, too_long, 10, sp) is None  # beyond the buckets


def test_no_compile_before_the_first_generation_nor_beside_one(tiny_lm):
    """The warm-up waits for the first suggestion; a queued compile waits while one is generated."""
    model, tok = tiny_lm
    g = Generator(model, tok)
    fd = g.start_fast_path(DecodeSettings(backend="eager", warmup=((4, 256),)))
    key = model_key(g.model)
    assert not fd.wait_ready(key, 4, 256, timeout=1.5)  # nothing served yet: nothing compiled
    with fd.serving():  # a generation in flight (the first)
        time.sleep(1.0)
        assert not fd.ready(key, 4, 256) and not fd.warm_log
    assert fd.wait_ready(key, 4, 256, timeout=120)  # compiled once it ended
    gen = GenerationSettings(k=3, temperature=0.0, max_new_tokens=6)
    g.suggest(build_prompt("continue", "The rain had not stopped."), "", gen)  # suggest enters serving()
    assert fd._served == 2 and fd._inflight == 0  # the manual one above and the suggest

def _save_adapter(tmp_path, name, seed):
    from assistant.lm.tiny import build_tiny_lm

    donor, _ = build_tiny_lm(seed=0)
    _random_adapter(donor, seed=seed, scale=2.0).save_pretrained(tmp_path / name / ADAPTER_SUBDIR)
    return str(tmp_path / name)

def test_hot_swap_reuses_the_compiled_step(tiny_lm, tmp_path):
    """Publishing a new version copies its LoRA weights in place: outputs change, nothing is
    recompiled. Only the first adapter (a new module structure) needs graphs of its own."""
    from torch._dynamo.utils import counters

    model, tok = tiny_lm
    live = {"v": None}
    g = Generator(model, tok, version_source=lambda _profile: live["v"])
    fd = g.start_fast_path(DecodeSettings(backend="eager", warmup=((4, 256),), after_first_request=False))
    assert fd.wait_idle(timeout=120) and fd.ready(model_key(g.model), 4, 256)  # the queue drained: compiled
    p = build_prompt("continue", "The rain had not stopped.")
    gen = GenerationSettings(k=3, temperature=0.0, max_new_tokens=10, repetition_penalty=1.3)
    graphs = lambda: counters["stats"]["unique_graphs"]  # noqa: E731
    n0 = graphs()
    base = g.suggest(p, "", gen).raw
    assert graphs() == n0  # served by the warmed graph

    live["v"] = (1, _save_adapter(tmp_path, "v1", seed=1))
    v1_first = g.suggest(p, "", gen).raw  # new structure: generate serves while it compiles
    assert fd.wait_ready(model_key(g.model), 4, 256, timeout=120)
    v1 = g.suggest(p, "", gen).raw
    assert v1 == v1_first != base
    n1 = graphs()

    key = model_key(g.model)
    live["v"] = (2, _save_adapter(tmp_path, "v2", seed=2))
    v2 = g.suggest(p, "", gen).raw
    assert g.policy_version == 2 and model_key(g.model) == key  # swapped in place
    assert graphs() == n1  # ... and no recompilation
    assert v2 != v1
    # the in-place swap gives what loading v2 from scratch gives
    from assistant.lm.tiny import build_tiny_lm

    fresh = Generator(build_tiny_lm(seed=0, tokenizer=tok)[0], tok, version_source=lambda _profile: live["v"])
    assert fresh.suggest(p, "", gen).raw == v2

@pytest.mark.parametrize("backend", [
    "aot_eager",  # dynamo + AOT autograd (the in-place updates of the cache and state): seconds
    pytest.param("inductor", marks=pytest.mark.integration),  # the production backend: 1-2 min on 2 cores
])
def test_compiled_step_matches_generate(tiny_lm, backend):
    model, tok = tiny_lm
    fd = FastDecoder(DecodeSettings(backend=backend, warmup=((4, 256),), after_first_request=False))
    key = model_key(model)
    fd.warm_up(key, model)
    assert fd.wait_ready(key, 4, 256, timeout=300), fd.warm_log
    ids, att = _enc(tok, PROMPTS)
    sp = Sampling.make(0.0, 1.0, 1.3, [tok.eos_token_id], tok.pad_token_id, "cpu")
    assert torch.equal(fd.decode(key, model, ids, att, 20, sp), _reference(model, tok, ids, att, 20, 1.3))

def test_model_key_of_the_base_model_under_a_peft_model(tiny_lm):
    """Once peft wraps it, the base model carries a peft_config and transformers' active_adapters()
    *method*: its key must still be computable (it used to raise in the compile thread when the
    first adapter was loaded during the start-up compile, and the thread died)."""
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_lm
    before = model_key(model)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert model_key(model) != before  # its modules changed
    assert model_key(pm) != model_key(model)
