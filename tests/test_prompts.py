"""Pure prompt building for the three modes and the styles."""

from __future__ import annotations

import pytest

from assistant.lm.prompts import (
    CONTINUE_REQUEST,
    INSPIRE_INSTRUCTIONS,
    STYLE_INSTRUCTIONS,
    SYSTEM,
    _tail,
    build_prompt,
    render,
    style_instruction,
)


def _user(p) -> str:
    return next(m["content"] for m in p.messages if m["role"] == "user")


def test_continue_puts_the_draft_in_the_assistant_turn():
    p = build_prompt("continue", "  The rain had not stopped.  ")
    assert p.mode == "continue"
    assert p.messages == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": CONTINUE_REQUEST}]
    assert p.assistant_prefix == "The rain had not stopped." == p.plain
    with pytest.raises(ValueError, match="continue needs"):
        build_prompt("continue", "   ")


def test_continue_keeps_only_the_tail_of_a_long_draft():
    words = " ".join(f"word{i}" for i in range(1000))
    p = build_prompt("continue", words, {"context_chars": 100})
    assert len(p.assistant_prefix) <= 100
    assert words.endswith(p.assistant_prefix)
    assert p.assistant_prefix.startswith("word")  # cut at a word boundary, not mid-word
    assert _tail("short", 100) == "short"
    assert _tail("alpha beta gamma", 10) == "gamma"  # "beta gamma"[-10:] -> cut after the first space


@pytest.mark.parametrize("style", sorted(STYLE_INSTRUCTIONS))
def test_restyle_builtin_styles(style):
    p = build_prompt("restyle", "I am tired.", {"style": style})
    assert _user(p) == f"{STYLE_INSTRUCTIONS[style]}\n\nPassage:\nI am tired."
    assert p.assistant_prefix == ""
    assert p.plain.endswith("Rewritten passage:\n")


def test_restyle_imitates_a_sample_and_custom_styles():
    p = build_prompt("restyle", "I am tired.", {"style": "sample", "sample": "  Call me Ishmael.  "})
    assert "reads like the sample" in _user(p)
    assert "Sample:\nCall me Ishmael." in _user(p)
    # no style at all with a sample also imitates
    assert "Sample:\nCall me Ishmael." in _user(build_prompt("restyle", "x", {"sample": "Call me Ishmael."}))

    p = build_prompt("restyle", "I am tired.", {"style": "noir", "custom_styles": {"noir": "hard-boiled, neon"}})
    assert _user(p).startswith("Rewrite the passage in this style: hard-boiled, neon")


def test_restyle_errors():
    with pytest.raises(ValueError, match="unknown style 'gothic'"):
        build_prompt("restyle", "x", {"style": "gothic"})
    with pytest.raises(ValueError, match="sample"):
        style_instruction("sample", "   ")
    with pytest.raises(ValueError, match="restyle needs"):
        build_prompt("restyle", "", {"style": "formal"})
    with pytest.raises(ValueError, match="unknown mode"):
        build_prompt("summarise", "x")


@pytest.mark.parametrize("kind", sorted(INSPIRE_INSTRUCTIONS))
def test_inspire_kinds_keywords_and_material(kind):
    p = build_prompt("inspire", "", {"keywords": "lighthouse, storm", "inspire_kind": kind})
    assert _user(p) == INSPIRE_INSTRUCTIONS[kind].format(topic="lighthouse, storm")
    assert p.meta == {"keywords": ["lighthouse", "storm"], "inspire_kind": kind}

    p = build_prompt("inspire", "grief", {"keywords": ["sea"], "inspire_kind": kind,
                                          "material": ["note one", "", "note two", "note three", "note four"]})
    u = _user(p)
    assert "about: sea." in u and "Theme: grief." in u
    assert "- note one\n- note two\n- note three" in u and "note four" not in u


def test_inspire_uses_the_text_as_topic_and_errors():
    assert "about: a lost key." in _user(build_prompt("inspire", "a lost key", {}))
    with pytest.raises(ValueError, match="keywords or a theme"):
        build_prompt("inspire", " ", {"keywords": []})
    with pytest.raises(ValueError, match="inspire kind"):
        build_prompt("inspire", "x", {"inspire_kind": "poem"})


def test_render_uses_the_chat_template_or_the_plain_prompt(tiny_tokenizer):
    p = build_prompt("continue", "The rain had not stopped.")
    s = render(p, tiny_tokenizer)
    assert s.startswith("<|im_start|>system\n" + SYSTEM)
    assert s.endswith("<|im_start|>assistant\nThe rain had not stopped.")

    class NoTemplate:
        chat_template = None

    r = build_prompt("restyle", "I am tired.", {"style": "formal"})
    assert render(r, NoTemplate()) == r.plain


def test_with_angle_adds_to_the_instruction_of_continue_and_inspire_only():
    from assistant.lm.prompts import ANGLES, with_angle

    angle = ANGLES[1]
    c = build_prompt("continue", "The rain had not stopped.")
    ca = with_angle(c, angle)
    assert ca.messages[-1]["content"] == f"{CONTINUE_REQUEST} {angle}"
    assert ca.assistant_prefix == c.assistant_prefix and ca.plain == c.plain  # the draft stays the reply's start
    assert c.messages[-1]["content"] == CONTINUE_REQUEST  # the original is not touched
    assert ca.meta["angle"] == angle
    i = build_prompt("inspire", "", {"keywords": "fog, lamp"})
    ia = with_angle(i, angle)
    assert ia.messages[-1]["content"].endswith(f"fog, lamp. {angle}")
    assert ia.plain.endswith(f"fog, lamp. {angle}\n\n")
    r = build_prompt("restyle", "I am tired.", {"style": "formal"})
    assert with_angle(r, angle) is r  # the person named the style
    assert with_angle(c, "") is c and ANGLES[0] == ""  # the first candidate is written as asked
