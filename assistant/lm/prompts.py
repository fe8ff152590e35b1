"""Pure prompt building for the three modes.

`build_prompt(mode, text, options)` returns a `Prompt`: chat messages (for instruct models with a
chat template) plus a plain-text fallback (for base models without one). No model, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from assistant.lm.config import BUILTIN_STYLES, INSPIRE_KINDS, MODES

STYLE_INSTRUCTIONS: dict[str, str] = {
    "formal": "Rewrite the passage in a formal, polished register: precise words, no slang, no contractions.",
    "casual": "Rewrite the passage in a casual, friendly, conversational voice, as if talking to a friend.",
    "concise": "Rewrite the passage to be as short and clear as possible. Cut every unnecessary word.",
    "vivid": "Rewrite the passage with vivid, concrete, sensory detail: sights, sounds, textures, smells.",
    "poetic": "Rewrite the passage in a lyrical, poetic voice with rhythm and striking imagery.",
}

INSPIRE_INSTRUCTIONS: dict[str, str] = {
    "ideas": "Give one original story idea in two or three sentences about: {topic}.",
    "openings": "Write one striking opening line for a story about: {topic}.",
    "outline": "Write a short outline of four bullet points for a piece about: {topic}.",
}

CONTINUE_REQUEST = "Write a passage of prose."

ANGLES: tuple[str, ...] = (
    "",
    "Use vivid, concrete sensory detail.",
    "Keep it short, in brief plain sentences.",
    "Give it a warm, hopeful tone.",
    "Take an unexpected angle.",
)
"""Angles for varied candidates (``GenerationSettings.variety``): candidate i of a request is
written with ``ANGLES[i % len(ANGLES)]`` added to the instruction, the first as asked. Sampled
candidates of a small model tend to say the same thing the same way; a person's ratings can only
teach the reward model about what differs between the candidates shown, so these span the axes
writers most often steer along (detail, length, tone, surprise)."""
ANGLE_NAMES: dict[str, str] = dict(zip(ANGLES, ("as asked", "sensory detail", "brevity", "warm tone", "surprise")))
"""A short name per angle, for the UI."""
ANGLE_MODES = ("continue", "inspire")
"""Modes that take an angle. Restyle does not: the person already named the style."""
SYSTEM = "You are a skilled writing assistant. Reply with the requested text only, no preamble."


@dataclass
class Prompt:
    """What the generator feeds the model for one request."""

    mode: str
    messages: list[dict[str, str]]
    plain: str
    """Plain-text prompt for models without a chat template."""
    assistant_prefix: str = ""
    """Text the reply starts with (part of the prompt, never of the suggestion)."""
    meta: dict[str, Any] = field(default_factory=dict)


def _tail(text: str, max_chars: int) -> str:
    """The last max_chars of text, cut at a word boundary."""
    if len(text) <= max_chars:
        return text
    cut = text[-max_chars:]
    space = cut.find(" ")
    return cut[space + 1 :] if 0 <= space < 40 else cut


def style_instruction(style: str | None, sample: str | None, custom_styles: dict[str, str] | None = None) -> str:
    """The instruction for a named style, a person-defined style, or imitation of a sample."""
    custom_styles = custom_styles or {}
    if style in (None, "", "sample", "imitate"):
        if not sample or not sample.strip():
            raise ValueError("restyle needs a style name or a sample text to imitate")
        return (
            "Rewrite the passage so it reads like the sample below: same voice, rhythm, vocabulary and "
            f"tone.\n\nSample:\n{sample.strip()}"
        )
    if style in STYLE_INSTRUCTIONS:
        return STYLE_INSTRUCTIONS[style]
    if style in custom_styles:
        return f"Rewrite the passage in this style: {custom_styles[style]}"
    raise ValueError(
        f"unknown style {style!r}; use one of {', '.join(BUILTIN_STYLES)}, 'sample' with a sample text, "
        "or a style you defined"
    )


def build_prompt(mode: str, text: str, options: dict[str, Any] | None = None) -> Prompt:
    """Build the prompt for one request.

    options: ``style``, ``sample``, ``custom_styles`` (restyle); ``keywords``, ``inspire_kind``,
    ``material`` (inspire); ``context_chars`` (continue, default 2000).
    """
    options = options or {}
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    text = (text or "").strip()
    if mode == "continue":
        if not text:
            raise ValueError("continue needs a draft to continue")
        draft = _tail(text, int(options.get("context_chars", 2000)))
        # The draft is put in the assistant's mouth: the model then simply writes on from it,
        # which small instruct models do far better than following "continue this" instructions.
        return Prompt(
            mode,
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": CONTINUE_REQUEST}],
            plain=draft,
            assistant_prefix=draft,
            meta={"draft_tail": draft},
        )
    if mode == "restyle":
        if not text:
            raise ValueError("restyle needs a passage to rewrite")
        instr = style_instruction(options.get("style"), options.get("sample"), options.get("custom_styles"))
        return Prompt(
            mode,
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{instr}\n\nPassage:\n{text}"}],
            plain=f"{instr}\n\nPassage:\n{text}\n\nRewritten passage:\n",
        )
    # inspire
    keywords = options.get("keywords") or []
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",") if k.strip()]
    topic = ", ".join(keywords) if keywords else text
    if not topic:
        raise ValueError("inspire needs keywords or a theme")
    kind = options.get("inspire_kind", "ideas")
    if kind not in INSPIRE_KINDS:
        raise ValueError(f"unknown inspire kind {kind!r}; expected one of {', '.join(INSPIRE_KINDS)}")
    instr = INSPIRE_INSTRUCTIONS[kind].format(topic=topic)
    if keywords and text:
        instr += f" Theme: {text}."
    material = [m for m in options.get("material") or [] if m]
    if material:
        instr += "\n\nNotes from the writer's library you may draw on:\n" + "\n".join(f"- {m}" for m in material[:3])
    return Prompt(
        mode,
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": instr}],
        plain=f"{instr}\n\n",
        meta={"keywords": keywords, "inspire_kind": kind},
    )


def with_angle(prompt: Prompt, angle: str) -> Prompt:
    """The prompt with `angle` appended to its instruction (the last user message, and the plain
    prompt of inspire). Unchanged for an empty angle and for modes outside ANGLE_MODES. A continue
    prompt without a chat template is the draft itself, so only the chat form carries the angle."""
    angle = angle.strip()
    if not angle or prompt.mode not in ANGLE_MODES:
        return prompt
    messages = [dict(m) for m in prompt.messages]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = f"{messages[last_user]['content']} {angle}"
    plain = prompt.plain
    if prompt.mode == "inspire":
        plain = f"{plain.rstrip()} {angle}\n\n"
    return Prompt(prompt.mode, messages, plain, prompt.assistant_prefix, {**prompt.meta, "angle": angle})


def render(prompt: Prompt, tokenizer) -> str:
    """The exact string fed to the tokenizer: the chat template if the tokenizer has one
    (then the assistant prefix opens the reply), else the plain prompt."""
    if getattr(tokenizer, "chat_template", None):
        s = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        return s + prompt.assistant_prefix
    return prompt.plain
