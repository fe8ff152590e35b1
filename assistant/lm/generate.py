"""Generator: K candidate suggestions from one batched generate call, streamed as they grow.

It also owns the live policies: before each generation it asks the store for the newest published
policy version of the request's profile and, if that is not the one loaded, swaps that LoRA
adapter in under the same lock that guards generation, so a request never sees half a swap or
another profile's adapter. Every result says which version produced it (0 = the base model).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from assistant.lm import adapters
from assistant.lm.adapters import adapter_dir
from assistant.lm.cleaning import clean_candidate, dedupe, normalized
from assistant.lm.config import MIN_SAMPLING_TEMPERATURE, GenerationSettings
from assistant.lm.decode import DecodeSettings, FastDecoder, Sampling, model_key
from assistant.lm.models import autocast_context, contiguous_lm_head_input
from assistant.lm.prompts import ANGLE_MODES, ANGLES, Prompt, render, with_angle

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- streaming plumbing
class BatchStreamer:
    """A transformers streamer for batch > 1: collects new token ids per row and reports the
    decoded partial texts every `every` tokens through `on_update(list[str])`."""

    def __init__(self, tokenizer, batch: int, on_update: Callable[[list[str]], None], every: int = 4):
        self.tokenizer, self.batch, self.on_update, self.every = tokenizer, batch, on_update, every
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self._prompt_seen = False
        self._n = 0

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt ids
            self._prompt_seen = True
            return
        ids = value.reshape(self.batch, -1).tolist()
        for row, new in zip(self.tokens, ids):
            row.extend(new)
        self._n += 1
        if self._n % self.every == 0:
            self.on_update(self.texts())

    def texts(self) -> list[str]:
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in self.tokens]

    def end(self) -> None:
        self.on_update(self.texts())


class ParagraphStop(StoppingCriteria):
    """Per-row stop for continuations: a row is done once it has written a paragraph break
    after at least `min_tokens` tokens (EOS is handled by generate itself)."""

    def __init__(self, tokenizer, prompt_len: int, min_tokens: int):
        self.tokenizer, self.prompt_len, self.min_tokens = tokenizer, prompt_len, min_tokens

    def row_done(self, new_tokens: list[int]) -> bool:
        """The rule for one row, given its new tokens so far (the fast decode path calls this)."""
        return len(new_tokens) >= self.min_tokens and "\n\n" in self.tokenizer.decode(new_tokens[-3:])

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len:]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i, row in enumerate(new.tolist()):
            done[i] = self.row_done(row)
        return done


class StopWhen(StoppingCriteria):
    """Stops every row once `should_stop()` is true (a deadline passed, the client left)."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), bool(self.should_stop()), dtype=torch.bool, device=input_ids.device)


# ----------------------------------------------------------------------------- THE generation function
def eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """The one stop rule's token ids: the tokenizer's EOS, the model's generation-config EOS, and
    the tokenizer's other special tokens (a chat model that writes `<|im_start|>` has left the
    reply). Generation stops at the first of them and the reply is cut there."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gc_eos, int):
        ids.add(gc_eos)
    elif gc_eos:
        ids.update(int(x) for x in gc_eos)
    return sorted(ids)


@dataclass
class Sampled:
    """One reply per prompt row from one batched call, as tokens (for RL) and as text (for people)."""

    prompt_ids: torch.Tensor
    """(B, P) the left-padded prompts."""
    prompt_mask: torch.Tensor
    """(B, P) 1 on real prompt tokens."""
    tokens: torch.Tensor
    """(B, T) the replies; after a row's stop token, padding."""
    mask: torch.Tensor
    """(B, T) 1 on reply tokens up to and including the stop token."""
    texts: list[str]
    """Each reply decoded without its stop token (raw: no cleaning)."""
    finished: list[bool]
    """Whether each reply ended with a stop token (rather than at the length limit)."""


def sample(
    model: torch.nn.Module, tokenizer, prompt_texts: list[str], gen: GenerationSettings, *,
    paragraph_stop: bool = False, on_tokens: Callable[[list[str]], None] | None = None, autocast: bool = False,
    pause: Callable[[], object] | None = None, should_stop: Callable[[], bool] | None = None,
    fast: FastDecoder | None = None,
) -> Sampled:
    """THE generation function: one sampled reply per prompt text, all rows in one batch.

    The Generator (suggestions), the RL rollout, the learner's evaluation and the simulation all
    call it, so they share one rule for padding (left, set per call: the tokenizer is shared between
    threads), for stopping (`eos_ids`; with `paragraph_stop`, also a paragraph break after
    gen.min_new_tokens tokens) and for cutting replies. Sampling follows `gen` (temperature 0 =
    greedy; top_p with top_k off; repetition_penalty); every reply has at least one token.
    `pause`, if given, is called before every decode step (the learner's safe point to yield the
    CPU to the app: no database transaction is ever open there). `should_stop()`, asked after
    every token, ends all rows early (a time limit, a dropped client): the replies so far come back
    as unfinished. With `fast` (the Generator's FastDecoder) and gen.fast_path, a shape whose
    compiled decode step is ready runs on it (same stop ids, stop rules and cut); any other call
    runs transformers' generate."""
    enc = tokenizer(prompt_texts, return_tensors="pt", add_special_tokens=False, padding=True,
                    padding_side="left")
    device = next(model.parameters()).device
    input_ids, attention = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    prompt_len = input_ids.shape[1]
    stop_ids = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    para = ParagraphStop(tokenizer, prompt_len, min_tokens=max(4, gen.min_new_tokens)) if paragraph_stop else None
    greedy = float(gen.temperature) < MIN_SAMPLING_TEMPERATURE
    resp = None
    if fast is not None and gen.fast_path and pause is None:
        sp = Sampling.make(0.0 if greedy else float(gen.temperature), float(gen.top_p), float(gen.repetition_penalty),
                           stop_ids, pad, device)
        relay = None if on_tokens is None else (
            lambda rows: on_tokens([tokenizer.decode(r, skip_special_tokens=True) for r in rows]))

        def row_done(tokens: list[int]) -> bool:
            return (para is not None and para.row_done(tokens)) or (should_stop is not None and should_stop())

        resp = fast.decode(model_key(model), model, input_ids, attention, int(gen.max_new_tokens), sp,
                           row_done if para is not None or should_stop is not None else None, relay)
    if resp is None:  # transformers' generate
        hooks = (para, pause and PausePoint(pause), should_stop and StopWhen(should_stop))
        kwargs = dict(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=int(gen.max_new_tokens),
            do_sample=not greedy, repetition_penalty=float(gen.repetition_penalty), pad_token_id=pad,
            eos_token_id=stop_ids, stopping_criteria=StoppingCriteriaList([h for h in hooks if h]),
        )
        if not greedy:
            kwargs.update(temperature=float(gen.temperature), top_p=float(gen.top_p), top_k=0)
        if on_tokens is not None:
            kwargs["streamer"] = BatchStreamer(tokenizer, len(prompt_texts), on_tokens)
        with torch.inference_mode(), autocast_context(device, autocast):
            resp = model.generate(**kwargs)[:, prompt_len:]
    is_stop = torch.isin(resp, torch.tensor(stop_ids, device=resp.device))
    after_stop = (is_stop.long().cumsum(1) - is_stop.long()) > 0
    mask = (~after_stop).long()
    resp = torch.where(mask.bool(), resp, torch.full_like(resp, pad))
    texts, finished = [], []
    for row, m, s in zip(resp.tolist(), mask.tolist(), is_stop.tolist()):
        n = sum(m)
        ended = any(s[:n])
        texts.append(tokenizer.decode(row[: n - 1] if ended else row[:n], skip_special_tokens=True))
        finished.append(ended)
    return Sampled(input_ids, attention, resp, mask, texts, finished)


class PausePoint(StoppingCriteria):
    """Calls `pause()` at every decode step and never stops a row (see `sample`'s `pause`)."""

    def __init__(self, pause: Callable[[], object]):
        self.pause = pause

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.pause()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


# ----------------------------------------------------------------------------- generator
@dataclass
class SuggestResult:
    texts: list[str]
    prompt_text: str
    policy_version: int
    seconds: float
    rounds: int = 1
    raw: list[str] = field(default_factory=list)
    angles: list[str] = field(default_factory=list)
    """The angle each kept text was written with (aligned with texts; "" = as asked)."""


@dataclass
class StreamEvent:
    partial: list[str]
    done: bool = False
    result: SuggestResult | None = None


class Generator:
    """Produces suggestions with each profile's live policy (base model + that profile's LoRA adapter).

    `version_source(profile)` returns ``(version_id, version_dir)`` of the profile's live policy or
    ``None`` for the base model; it is called before every generation (a cheap store query). The
    one model switches to the request's profile under the generation lock: in place from weights
    kept in memory (`adapter_cache` versions, LRU) when the LoRA structures match, which keeps the
    fast path's compiled graphs valid; the base model is then the same adapter filled with zeros.
    A version that cannot be loaded does not stop generation: it is reported once
    (``on_error(profile, version_id, message)``), never retried, and the generator serves what the
    source offers next (the composition offers the profile's newest loadable published version) or
    what served that profile last (else the base model): never another profile's adapter."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        version_source: Callable[[str], tuple[int, str] | None] | None = None,
        device: torch.device | None = None,
        busy: Callable[[], ContextManager] | None = None,
        on_error: Callable[[str, int, str], None] | None = None,
        adapter_cache: int = 8,
    ):
        contiguous_lm_head_input(model)  # keeps generation fast once peft freezes the base
        self.base_model = model
        self.model = model  # becomes a PeftModel once a policy version is loaded
        self.tokenizer = tokenizer
        self.version_source = version_source or (lambda profile: None)
        self.device = device or next(model.parameters()).device
        self.policy_version = 0
        """The version loaded right now (whichever profile it belongs to; 0 = the base model)."""
        self.served: dict[str, tuple[int, str] | None] = {}
        """Per profile, the version that served its last request ((id, dir); None = the base model)."""
        self.weights = adapters.WeightCache(adapter_cache)
        """Adapter weights of recently served versions, in memory (switching profiles reads no disk)."""
        self.on_error = on_error
        self.failed_versions: set[int] = set()
        """Versions that failed to load (never retried: a version directory does not heal)."""
        self.load_errors: dict[int, str] = {}
        """Why each failed version could not be loaded, as reported."""
        self.lock = threading.RLock()
        self.busy = busy or contextlib.nullcontext
        """Entered around every generation (`inkloop serve`: the learner process is held off the CPU)."""
        self.fast: FastDecoder | None = None
        """The compiled decode path, once start_fast_path ran (assistant.lm.decode)."""

    # ------------------------------------------------------------------ fast decode path
    def start_fast_path(self, settings: DecodeSettings | None = None) -> FastDecoder:
        """Attach the fast decode path and compile its warm-up buckets in a background thread.
        Until a bucket is ready, requests of that shape are served by `generate` as before."""
        if self.fast is None:
            self.fast = FastDecoder(settings)
        self.fast.warm_up(model_key(self.model), self.model)
        return self.fast

    # ------------------------------------------------------------------ hot swap
    def served_version(self, profile: str = "default") -> int:
        """The version that served `profile`'s last request (0: the base model, or none yet)."""
        v = self.served.get(profile)
        return v[0] if v else 0

    def refresh_policy(self, profile: str = "default") -> int:
        """Switch to `profile`'s live version now (as every generation does first). Returns the
        version loaded."""
        with self.lock:
            failures = self._switch(profile)
            vid = self.policy_version
        self._report(profile, failures)
        return vid

    def _switch(self, profile: str) -> list[tuple[int, Exception]]:
        """Load what `profile` is to be served with (the caller holds the lock). A version that
        fails joins `failed_versions`; the source is asked again (see
        assistant.app.cli.common.policy_source); while it still names a failed version, the
        profile keeps the version that served it last, else the base model."""
        failures: list[tuple[int, Exception]] = []
        for _ in range(4):
            want = self.version_source(profile)
            if want is not None and want[0] in self.failed_versions:
                last = self.served.get(profile)
                want = last if last is not None and last[0] not in self.failed_versions else None
            if self._serve(want, failures):
                break
        else:
            self._serve(None, failures)
        self.served[profile] = want if self.policy_version else None
        return failures

    def _serve(self, want: tuple[int, str] | None, failures: list[tuple[int, Exception]]) -> bool:
        """Make `want` ((id, dir), None = the base model) the loaded version; False if it failed."""
        if want is None:
            if self.policy_version != 0 and not adapters.swap_in_place(self.model, None):  # zeros: same modules
                self._unload_adapters()  # not one adapter to fill with zeros: take them all off
            self.policy_version = 0
            return True
        vid, vdir = want
        if vid == self.policy_version:
            return True
        try:
            self._load_adapter(vid, adapter_dir(vdir))
            return True
        except Exception as e:  # noqa: BLE001 - any unloadable version: keep generating
            self._drop_adapter(f"v{vid}")
            self.failed_versions.add(vid)
            failures.append((vid, e))
            return False

    def _report(self, profile: str, failures: list[tuple[int, Exception]]) -> None:
        kept = f"version {self.served_version(profile)}" if self.served_version(profile) else "the base model"
        for vid, e in failures:
            msg = f"policy version {vid} could not be loaded ({type(e).__name__}); generating with {kept}"
            self.load_errors[vid] = msg
            log.warning("%s: %s", msg, e)
            if self.on_error is not None:
                try:
                    self.on_error(profile, vid, msg)
                except Exception:  # noqa: BLE001 - reporting must not stop generation either
                    log.exception("on_error callback failed")

    def _load_adapter(self, vid: int, adapter_dir: Path) -> None:
        t0 = time.perf_counter()
        cached = vid in self.weights
        w = self.weights.get(vid, adapter_dir, str(self.device))  # raises before the model is touched
        if adapters.swap_in_place(self.model, w):
            self.policy_version = vid  # same modules: the compiled graphs stay valid
            log.info("switched to policy version %s in place (%s) in %.3f s", vid,
                     "from memory" if cached else "read from disk", time.perf_counter() - t0)
            return
        if self.fast is not None:
            self.fast.invalidate()  # the modules change under any compile in flight
        self.model = adapters.swap(self.model, adapter_dir, f"v{vid}")
        self.policy_version = vid
        log.info("loaded policy version %s (a new adapter structure) in %.2f s", vid, time.perf_counter() - t0)
        if self.fast is not None:  # a new adapter structure needs its own graphs, compiled in the background
            self.fast.warm_up(model_key(self.model), self.model)

    def _drop_adapter(self, name: str) -> None:
        """Remove what a failed load may have left: a half-registered adapter that is not in use."""
        try:
            if not hasattr(self.model, "get_base_model"):  # still the plain base: undo an in-place injection
                adapters.strip_injected(self.model)
                if hasattr(self.model, "peft_config"):
                    del self.model.peft_config
            elif name in self.model.peft_config and len(self.model.peft_config) > 1:
                self.model.delete_adapter(name)
        except Exception:  # noqa: BLE001
            log.exception("could not clean up adapter %s", name)

    def _unload_adapters(self) -> None:
        if self.fast is not None:
            self.fast.invalidate()
        if self.model is not self.base_model:
            self.base_model = self.model = adapters.detach(self.model)
        if self.fast is not None:
            self.fast.warm_up(model_key(self.model), self.model)

    # ------------------------------------------------------------------ generation
    def _generate_raw(
        self, prompt_texts: list[str], mode: str, gen: GenerationSettings,
        on_tokens: Callable[[list[str]], None] | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[list[str], list[bool]]:
        """One sampled continuation per row of prompt_texts, in one batch (the one `sample`)."""
        out = sample(self.model, self.tokenizer, prompt_texts, gen, paragraph_stop=mode == "continue",
                     on_tokens=on_tokens, should_stop=should_stop, fast=self.fast)
        return out.texts, out.finished

    def suggest(
        self, prompt: Prompt, source_text: str, gen: GenerationSettings,
        on_update: Callable[[list[str]], None] | None = None,
        should_stop: Callable[[], bool] | None = None, profile: str = "default",
    ) -> SuggestResult:
        """K distinct cleaned candidates for one prompt from `profile`'s live policy (tops up after
        dedup, up to max_rounds). With gen.draw > K the first call draws that many rows and every
        distinct one is returned (the app chooses which K to show); partial updates show the first
        K rows. Once `should_stop()` is true, generation ends and what was written so far is
        returned. The result carries the version that really generated it."""
        stopped = should_stop or (lambda: False)
        gen.validate()
        t0 = time.perf_counter()
        serving = self.fast.serving() if self.fast is not None else contextlib.nullcontext()
        with self.busy(), self.lock, serving:  # switch + every round: no other profile, no compile between
            failures = self._switch(profile)
            version = self.policy_version
            prompt_text = render(prompt, self.tokenizer)
            angles = list(ANGLES) if gen.variety and prompt.mode in ANGLE_MODES else [""]
            angle_texts = {a: render(with_angle(prompt, a), self.tokenizer) for a in angles}
            if gen.seed is not None:
                torch.manual_seed(int(gen.seed))
            kept: list[str] = []
            angle_of: dict[str, str] = {}  # normalised text -> the angle it was first written with
            raw_all: list[str] = []
            rounds, row = 0, 0
            while len(kept) < gen.k and rounds < 1 + gen.max_rounds and not stopped():
                need = gen.k - len(kept)
                n = max(gen.k, int(gen.draw)) if rounds == 0 else max(2, need)
                row_angles = [angles[(row + i) % len(angles)] for i in range(n)]
                row += n
                done_before = list(kept)

                def relay(partials: list[str], _prev=done_before) -> None:
                    if on_update is not None:
                        cleaned = [clean_candidate(p, prompt.mode, source_text, False) for p in partials]
                        on_update((_prev + cleaned)[: gen.k])

                raw, finished = self._generate_raw([angle_texts[a] for a in row_angles], prompt.mode, gen,
                                                   relay if on_update else None, should_stop)
                raw_all.extend(raw)
                cleaned = [clean_candidate(r, prompt.mode, source_text, f) for r, f in zip(raw, finished)]
                for text, a in zip(cleaned, row_angles):
                    angle_of.setdefault(normalized(text), a)
                kept = dedupe(kept + cleaned)[: max(gen.k, int(gen.draw))]
                rounds += 1
                if float(gen.temperature) < MIN_SAMPLING_TEMPERATURE:
                    break  # greedy cannot produce new candidates
        self._report(profile, failures)
        result = SuggestResult(kept, prompt_text, version, time.perf_counter() - t0, rounds, raw_all,
                               [angle_of.get(normalized(t), "") for t in kept])
        if on_update is not None:
            on_update(list(kept[: gen.k]))
        return result

    def stream(
        self, prompt: Prompt, source_text: str, gen: GenerationSettings,
        should_stop: Callable[[], bool] | None = None, profile: str = "default",
    ) -> Iterator[StreamEvent]:
        """Run `suggest` in a worker thread and yield partial candidates as they are produced.
        Closing the iterator early (the reader left) stops the generation at the next token."""
        q: queue.Queue = queue.Queue()
        box: dict[str, object] = {}
        left = threading.Event()

        def stop() -> bool:
            return left.is_set() or (should_stop is not None and should_stop())

        def work() -> None:
            try:
                box["result"] = self.suggest(prompt, source_text, gen, on_update=lambda p: q.put(list(p)),
                                             should_stop=stop, profile=profile)
            except BaseException as e:  # noqa: BLE001 - surfaced to the caller below
                box["error"] = e
            finally:
                q.put(None)

        t = threading.Thread(target=work, name="inkloop-generate", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                yield StreamEvent(item)
        finally:
            left.set()
        t.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        yield StreamEvent(box["result"].texts, done=True, result=box["result"])  # type: ignore[union-attr]
