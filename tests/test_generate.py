"""Text rules on hand-made strings, and the Generator on the tiny random model."""

from __future__ import annotations

import pytest
import torch

from assistant.lm.adapters import ADAPTER_SUBDIR
from assistant.lm.config import GenerationSettings
from assistant.lm.cleaning import clean_candidate, cut_at_boundary, dedupe, strip_echo
from assistant.lm.generate import Generator
from assistant.lm.prompts import build_prompt, render


# ----------------------------------------------------------------------------- pure text rules
def test_strip_echo():
    assert strip_echo("The rain fell. It was cold.", "The rain fell.") == "It was cold."
    # the draft's last sentence repeated at the start
    assert strip_echo("The rain fell. More rain.", "A long day. The rain fell.") == "More rain."
    # the last 60 characters repeated after a little noise
    src = "x" * 30 + " and the river rose higher than anyone could remember"
    assert strip_echo(f'  "{src[-60:]} then silence.', src) == "then silence."
    assert strip_echo("Something new.", "The rain fell.") == "Something new."
    assert strip_echo("  Anything.", "") == "Anything."


def test_cut_at_boundary():
    # cut off by the token limit: keep complete sentences only
    assert cut_at_boundary("He ran to the door. She walked and then", "restyle", False) == "He ran to the door."
    # finished on its own (EOS): kept whole
    assert cut_at_boundary("He ran to the door. She walked and then", "restyle", True) == \
        "He ran to the door. She walked and then"
    # a continuation is one paragraph
    assert cut_at_boundary("First paragraph here.\n\nSecond one", "continue", False) == "First paragraph here."
    # outlines end after the last complete line
    assert cut_at_boundary("1. the harbour\n2. the letter\n3. the jou", "inspire", False) == \
        "1. the harbour\n2. the letter"
    # no complete sentence: end at the last clause break with an ellipsis
    assert cut_at_boundary("a long clause without an end, and then some", "continue", False) == \
        "a long clause without an end…"
    # a sentence end before min_chars does not count
    assert cut_at_boundary("Hi. and then more words", "restyle", False) == "Hi. and then more words"
    assert cut_at_boundary('She said "go." Then the', "restyle", False) == 'She said "go."'


def test_clean_candidate():
    assert clean_candidate("Sure! Here is the rewritten passage:\nThe night was dark.", "restyle", "src", True) == \
        "The night was dark."
    assert clean_candidate("Rewritten passage: The night was dark.", "restyle", "src", True) == "The night was dark."
    assert clean_candidate("I am tired.", "restyle", "I am tired.", True) == ""  # an unchanged copy is no suggestion
    assert clean_candidate("The rain fell. It poured on.", "continue", "The rain fell.", True) == "It poured on."
    assert clean_candidate('"A quoted idea."', "inspire", "", True) == "A quoted idea."
    assert clean_candidate("line one\r\nline two", "inspire", "", True) == "line one\nline two"


def test_dedupe():
    assert dedupe(["A cat.", "a  cat", "", "  ", "A dog!", "a-dog"]) == ["A cat.", "A dog!"]
    assert dedupe([]) == []


# ----------------------------------------------------------------------------- Generator on the tiny model
def _gen(k=3, seed=None, max_new_tokens=12, temperature=1.0):
    return GenerationSettings(k=k, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature)


@pytest.mark.parametrize("mode, text, opts", [
    ("continue", "The rain had not stopped for three days.", {}),
    ("restyle", "I am tired.", {"style": "formal"}),
    ("inspire", "", {"keywords": "lighthouse, storm", "inspire_kind": "outline"}),
])
def test_generator_returns_k_distinct_candidates(tiny_lm, mode, text, opts):
    model, tok = tiny_lm
    g = Generator(model, tok)
    res = g.suggest(build_prompt(mode, text, opts), text, _gen(k=4, seed=3))
    assert len(res.texts) == 4
    assert all(t.strip() for t in res.texts)
    assert len(dedupe(res.texts)) == 4  # distinct even up to case and punctuation
    assert res.policy_version == 0 and res.rounds >= 1
    assert res.prompt_text.startswith("<|im_start|>system")
    assert len(res.raw) >= 4


def test_generator_seed_makes_it_reproducible(tiny_lm):
    model, tok = tiny_lm
    g = Generator(model, tok)
    p = build_prompt("continue", "She opened the door.")
    a = g.suggest(p, "She opened the door.", _gen(seed=7)).texts
    b = g.suggest(p, "She opened the door.", _gen(seed=7)).texts
    c = g.suggest(p, "She opened the door.", _gen(seed=8)).texts
    assert a == b
    assert a != c


def test_generator_refuses_invalid_settings(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="k must be"):
        Generator(model, tok).suggest(build_prompt("continue", "x"), "x", _gen(k=0))


def test_variety_writes_each_candidate_from_its_angle_in_one_padded_batch(tiny_lm):
    """Greedy, so each row is deterministic: row i of the left-padded batch must equal a
    generation from ANGLES[i]'s prompt alone (padding must not change what a row writes)."""
    from assistant.lm.prompts import ANGLES, with_angle

    model, tok = tiny_lm
    g = Generator(model, tok)
    text = "The storm is coming."
    p = build_prompt("continue", text)
    # a strong repetition penalty keeps the random model from writing only dots, so rows differ
    greedy = dict(temperature=0.0, max_new_tokens=10, repetition_penalty=5.0)
    side, tok.padding_side = tok.padding_side, "right"  # the generator pads on the left whatever the default
    try:
        res = g.suggest(p, text, GenerationSettings(k=4, variety=True, **greedy))
        assert tok.padding_side == "right"
    finally:
        tok.padding_side = side  # the tokenizer is shared by the whole session (conftest)
    assert res.rounds == 1 and len(res.raw) == 4
    for i, raw in enumerate(res.raw):
        alone = g.suggest(with_angle(p, ANGLES[i]), text, GenerationSettings(k=1, **greedy))
        assert raw == alone.raw[0], ANGLES[i]
    assert len(set(res.raw)) > 1  # the angles do change what is written
    assert len(res.angles) == len(res.texts) and set(res.angles) <= set(ANGLES)
    assert res.prompt_text == render(p, tok)  # what is stored (and rolled out by RL) is the prompt as asked
    # sampled, with K above the number of angles: every angle is used, in turn
    many = GenerationSettings(k=6, seed=2, max_new_tokens=10, temperature=1.0, variety=True)
    res = g.suggest(p, text, many)
    assert len(res.texts) == 6 and set(res.angles) == set(ANGLES)
    # restyle takes no angle
    r = build_prompt("restyle", "I am tired.", {"style": "formal"})
    assert set(g.suggest(r, "I am tired.", many).angles) == {""}


def test_services_record_the_angles_with_the_request(tiny_services):
    from assistant.app.services import SuggestRequest

    resp = tiny_services.suggest(SuggestRequest(mode="inspire", keywords="fog, lamp", k=3, max_new_tokens=10,
                                                seed=1, variety=True))
    req = tiny_services.store.get_request(resp.request_id)
    assert req.options["variety"] is True
    assert req.options["angles"] == [s.get("angle", "") for s in resp.suggestions]
    assert "" in req.options["angles"]  # the first angle is the request as asked, with no "angle" key
    plain = tiny_services.suggest(SuggestRequest(mode="inspire", keywords="fog, lamp", k=2, max_new_tokens=10))
    assert "angles" not in tiny_services.store.get_request(plain.request_id).options
    assert all("angle" not in s for s in plain.suggestions)


def test_stream_yields_partial_lists_then_the_final_result(tiny_lm):
    model, tok = tiny_lm
    g = Generator(model, tok)
    p = build_prompt("continue", "The storm is coming.")
    events = list(g.stream(p, "The storm is coming.", _gen(k=2, seed=1, max_new_tokens=16)))
    partials, final = events[:-1], events[-1]
    assert final.done and final.result is not None
    assert len(final.result.texts) == 2 and final.partial == final.result.texts
    assert len(partials) >= 3  # streamed every few tokens, not just once at the end
    assert all(not e.done and isinstance(e.partial, list) for e in partials)
    # the partial texts grow over time
    lengths = [sum(len(t) for t in e.partial) for e in partials]
    assert max(lengths[:2]) < max(lengths)


def test_generator_hot_swaps_the_live_adapter(tiny_lm, tmp_path):
    """A published LoRA version changes the output; going back to None restores the base model."""
    from peft import LoraConfig, get_peft_model

    from assistant.lm.tiny import build_tiny_lm

    donor, _ = build_tiny_lm(seed=0)
    peft_model = get_peft_model(donor, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2.0)  # make the adapter matter
    peft_model.save_pretrained(tmp_path / "v5" / ADAPTER_SUBDIR)

    model, tok = tiny_lm
    live: dict[str, object] = {"v": None}
    g = Generator(model, tok, version_source=lambda _profile: live["v"])
    p = build_prompt("continue", "The rain had not stopped.")
    base = g.suggest(p, "The rain had not stopped.", _gen(seed=11, temperature=0.0, k=1)).texts

    live["v"] = (5, str(tmp_path / "v5"))
    res = g.suggest(p, "The rain had not stopped.", _gen(seed=11, temperature=0.0, k=1))
    assert res.policy_version == 5 == g.policy_version
    assert res.texts != base

    live["v"] = None
    back = g.suggest(p, "The rain had not stopped.", _gen(seed=11, temperature=0.0, k=1))
    assert back.policy_version == 0 and back.texts == base
