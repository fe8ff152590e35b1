"""The pure text rules that turn a model's raw reply into a suggestion: no preamble, no echo of
the draft, cut at a sentence or paragraph boundary, duplicates dropped (the Generator, the RL
rollout and the learner's evaluation all clean with them)."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"""[.!?…]['")\]”’]*(?=\s|$)""")
_PREAMBLE = re.compile(
    r"^\s*(sure|certainly|of course|okay|ok|here(?:'s| is| are)|rewritten|revised|continuation|"
    r"opening line|story idea|outline|the rewritten|here you go)[^\n]{0,80}:\s*\n?",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*(text|passage|continuation|rewritten passage|answer)\s*:\s*", re.IGNORECASE)


def strip_echo(candidate: str, source: str) -> str:
    """Remove a leading copy of the prompt's text (or of its last sentence) from a candidate."""
    c = candidate.lstrip()
    src = source.strip()
    if not src:
        return c
    if c.startswith(src):
        return c[len(src):].lstrip()
    # the draft's last sentence (or last 60 chars) repeated at the start
    tail = src[-60:]
    pos = c.find(tail)
    if 0 <= pos <= 10:
        return c[pos + len(tail):].lstrip()
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", src) if s.strip()]
    if sentences and c.startswith(sentences[-1].strip()):
        return c[len(sentences[-1].strip()):].lstrip()
    return c


def cut_at_boundary(text: str, mode: str, finished: bool, min_chars: int = 12) -> str:
    """Stop a candidate at a sentence or paragraph boundary.

    A candidate that ended on its own (EOS) is kept whole. One cut off by the token limit is cut
    after its last complete sentence (outlines: after the last complete line)."""
    text = text.strip()
    if mode == "continue":
        # a continuation is one paragraph: stop at the first paragraph break
        para = text.find("\n\n")
        if para >= min_chars:
            text, finished = text[:para].rstrip(), True
    if finished:
        return text
    if mode == "inspire" and "\n" in text:
        last_nl = text.rfind("\n")
        if last_nl >= min_chars:
            return text[:last_nl].rstrip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    ends = [e for e in ends if e >= min_chars]
    if ends:
        return text[: ends[-1]].rstrip()
    # no complete sentence: end at the last clause break rather than mid-phrase
    clause = max(text.rfind(c) for c in (",", ";", ":", " -", "–", "—"))
    if clause >= min_chars:
        return text[:clause].rstrip() + "…"
    return text


def clean_candidate(raw: str, mode: str, source_text: str, finished: bool) -> str:
    """Turn raw model output into a suggestion: no preamble, no echo, cut at a boundary."""
    text = raw.replace("\r\n", "\n")
    text = _PREAMBLE.sub("", text, count=1)
    text = _LABEL.sub("", text, count=1)
    if mode == "continue":
        text = strip_echo(text, source_text)
    elif mode == "restyle" and text.strip() == source_text.strip():
        return ""
    text = cut_at_boundary(text, mode, finished)
    return text.strip().strip('"').strip()


def normalized(s: str) -> str:
    """`s` as duplicates are compared: lower case, punctuation and spacing folded."""
    return re.sub(r"[\W_]+", " ", s.lower()).strip()


def dedupe(texts: list[str]) -> list[str]:
    """Drop empty candidates and ones identical up to case, spacing and punctuation."""
    seen, out = set(), []
    for t in texts:
        key = normalized(t)
        if key and key not in seen:
            seen.add(key)
            out.append(t)
    return out
