"""Fast decoding for the Generator: a pre-allocated KV cache, one prefill fanned out to the rows,
and a compiled single-token step with the sampling fused in, around transformers' own model code.

Why: one eager decode step of SmolLM2-135M costs tens of milliseconds of op dispatch, cache
bookkeeping and small kernels, while reading its weights once costs about 14 ms on this CPU. This
module keeps the model code and removes the overhead:

- `Slots`: the state of one (rows, cache length) bucket, allocated once and reused by every
  request of that shape: a transformers `StaticCache`, the 2-D attention mask, the repetition
  penalty's "seen" table, the output buffer.
- `prefill`: one forward over the prompt. When every row has the same prompt (the usual case: K
  candidates of one request) the prompt is run once and its keys/values are copied to the N rows;
  different prompts (varied angles) run as one left-padded batch, exactly like `generate`.
- `decode_step`: one token for every row (attention-mask update, forward, repetition penalty,
  temperature, top-p, sampling or greedy, EOS bookkeeping) with fixed shapes, so `torch.compile`
  turns it into one graph per bucket. Sampling uses the exponential-race form of a categorical
  draw (argmax p/E, E ~ Exp(1)), which has the same distribution as `torch.multinomial`.
- The host looks at the tokens only every `check_every` steps: the per-row stop rule (the
  continue mode's paragraph break) is applied retroactively at the step it would have fired, and
  the rows' tokens after it are replaced by padding, so the output is what `generate` returns.
  When every row has stopped the loop ends.
- `FastDecoder`: owns the buckets and the compiled step, compiles/warms buckets in a background
  thread, and answers `None` for a bucket that is not ready yet so that the caller falls back to
  `model.generate` (a request never waits for a compilation).

Greedy decoding gives the tokens `model.generate` gives (tests, base model and LoRA adapter).
Everything is device-agnostic: the buffers live on the model's device (CPU or CUDA).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable

import torch

log = logging.getLogger(__name__)

RowDone = Callable[[list[int]], bool]
"""A per-row stop rule: given a row's new tokens so far, has the row finished?"""


@dataclass
class DecodeSettings:
    """How the fast decode path is built (one per process; the Generator owns it)."""

    compile: bool = True
    """Compile the decode step with torch.compile (False: the same static-cache path, eager)."""
    backend: str = "inductor"
    """torch.compile backend ("inductor"; "eager" only traces, for tests)."""
    mode: str | None = None
    """torch.compile mode (None = default; e.g. "max-autotune-no-cudagraphs"). Exclusive with
    inductor_options."""
    inductor_options: tuple[tuple[str, object], ...] = ()
    """Extra inductor options as (name, value) pairs, e.g. (("cpp_wrapper", True),)."""
    row_buckets: tuple[int, ...] = (4, 8, 16)
    """Batch sizes compiled for; a request of n rows runs in the smallest bucket >= n (the extra
    rows copy row 0 and are discarded). More rows than the largest bucket fall back."""
    length_buckets: tuple[int, ...] = (256, 384, 512, 768, 1024, 1536, 2048)
    """KV-cache lengths compiled for (prompt + max_new_tokens rounded up); longer falls back."""
    warmup: tuple[tuple[int, int], ...] = ((4, 256), (4, 384))
    """(rows, length) buckets compiled in the background right after start-up; other buckets are
    compiled the first time a request needs them (that request is served by generate)."""
    check_every: int = 4
    """Steps between host checks (stop rule, early exit, streamed partial texts)."""
    top_k: int = 1024
    """Candidates the compiled step draws from; exact whenever they hold top_p of the mass (else
    that row redraws over the whole vocabulary with transformers' sort). With SmolLM2 at T=0.8,
    top_p=0.95, 256 candidates were short in half the steps, 1024 in 1-12 % of them."""
    background_nice: int = 10
    """Niceness of the background compile thread (Linux), so that it yields to requests."""
    after_first_request: bool = True
    """Compile nothing before the process has served its first generation: tracing and lowering
    are Python and hold the GIL, and a request generated beside a compile ran 6.5x slower (the
    first suggestion of a fresh `serve` waited for the whole warm-up), so the warm-up waits for
    the first suggestion. False: compile right away (tests, benchmarks)."""
    quiet_seconds: float = 2.0
    """A compile starts only once no generation has run for this long (the next request of a
    person who reads and rates comes later than that; a burst of requests keeps it waiting)."""
    compile_switch_interval: float = 0.0005
    """sys.setswitchinterval while a compile runs (Python's default is 0.005 s): a request thread
    waiting for the GIL gets it back sooner (a request beside a compile: 6.5x -> 3.6x its idle
    time, measured on 1 thread). 0 leaves the interval alone."""


def pick_bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket >= n, or None when n exceeds them all."""
    fits = [b for b in sorted(buckets) if b >= n]
    return fits[0] if fits else None


# ----------------------------------------------------------------------------- sampling (pure)
def _penalised(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor on a (B, V) "seen" table."""
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def choose_next(logits: torch.Tensor, seen: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                penalty: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The next token of each row, exactly as transformers' generate computes it.

    logits (B, V) float32; seen (B, V) bool: tokens of the prompt (padding excluded) and of the
    output so far; temperature, top_p, penalty: 0-d float tensors (temperature <= 0 = greedy);
    noise (B, V) Exp(1) draws (unused when greedy). Order as in generate: repetition penalty,
    temperature, top-p (TopPLogitsWarper's sort, top_k = 0), then a categorical draw in its
    exponential-race form argmax(p / E), which has multinomial's distribution.
    The full sort costs about 8 ms for 4 rows of a 49k vocabulary on this CPU (30 ms for 16): the
    decode loop uses `choose_next_topk` and comes here only when that cannot be exact."""
    scores = _penalised(logits, seen, penalty)
    greedy = temperature <= 0
    greedy_tok = scores.argmax(-1)
    scaled = scores / torch.where(greedy, torch.ones_like(temperature), temperature)
    if float(top_p) < 1.0:  # as generate: no TopPLogitsWarper at top_p = 1
        sorted_logits, sorted_idx = torch.sort(scaled, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cum <= (1 - top_p)
        remove_sorted[..., -1] = False  # min_tokens_to_keep = 1
        remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
        scaled = scaled.masked_fill(remove, float("-inf"))
    sampled = (scaled.softmax(-1) / noise).argmax(-1)
    return torch.where(greedy, greedy_tok, sampled)


def choose_next_topk(logits: torch.Tensor, seen: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                     penalty: torch.Tensor, noise_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`choose_next` through the k = noise_k.shape[1] most likely tokens only: (tokens, exact).

    Top-p keeps a token iff the probability mass ranked strictly above it is < top_p; when the k
    best tokens already hold >= top_p of the mass, every other token is removed and the draw
    among the k (noise_k: (B, k) Exp(1)) is exact. `exact` (B,) bool says for which rows that held
    (greedy rows always hold); the caller redraws the other rows with `choose_next`."""
    scores = _penalised(logits, seen, penalty)
    greedy = temperature <= 0
    greedy_tok = scores.argmax(-1)
    scaled = scores / torch.where(greedy, torch.ones_like(temperature), temperature)
    vals, ids = torch.topk(scaled, noise_k.shape[1], dim=-1)
    probs = (vals - torch.logsumexp(scaled, -1, keepdim=True)).exp()
    cum = probs.cumsum(-1)
    keep = (cum - probs) < top_p
    pick = (probs.masked_fill(~keep, 0.0) / noise_k).argmax(-1, keepdim=True)
    sampled = ids.gather(1, pick).squeeze(1)
    exact = greedy | (cum[:, -1] >= top_p)
    return torch.where(greedy, greedy_tok, sampled), exact


# ----------------------------------------------------------------------------- decode attention
ATTENTION_NAME = "inkloop_sdpa"
"""The attention implementation the fast path installs: transformers' sdpa, except in the
decode step (q_len 1, marked by the `inkloop_decode` kwarg), where SDPA's CPU kernel costs about
1.5 ms a layer for 4 rows and the same attention as two fp32 matmuls about 0.07 ms."""


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """sdpa_attention_forward, or (decode step) the same attention as two small fp32 batched
    matmuls around a masked softmax: fp32 accumulation like SDPA's kernel.

    Why matmuls and not the reductions inductor would fuse: written as `(q * k).sum(-1)`, inductor
    inlines the query's rotary embedding (a cos and a sin per element) into the loop over the
    cache positions and recomputes it for every position: 17 ms of a 52 ms step for 4 rows of
    SmolLM2 at 256 positions. A matmul's inputs are materialised once (2 ms a step for all 60)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not kwargs.pop("inkloop_decode", False) or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    b, h, _, d = query.shape
    kvh, length = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else d ** -0.5
    q = query.reshape(b, kvh, h // kvh, d).float()  # the g = h / kvh query heads of each kv head
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * scale  # (b, kvh, g, L)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask.reshape(b, 1, 1, length), float("-inf"))
    out = torch.matmul(scores.softmax(-1), value.float())  # (b, kvh, g, d)
    return out.to(value.dtype).reshape(b, h, 1, d).transpose(1, 2), None


def install_decode_attention(model: torch.nn.Module) -> bool:
    """Route a model that uses sdpa through `decode_attention` (the very same sdpa call outside
    the decode step). Idempotent; False when the model uses another attention (then unchanged)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    cfg = model.config
    if cfg._attn_implementation == ATTENTION_NAME:
        return True
    if cfg._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(ATTENTION_NAME, decode_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    cfg._attn_implementation = ATTENTION_NAME
    return True


# ----------------------------------------------------------------------------- the bucket state
class Slots:
    """Pre-allocated decode state for `rows` rows and a KV cache of `length` positions."""

    def __init__(self, model: torch.nn.Module, rows: int, length: int, top_k: int = 1024):
        from transformers import StaticCache

        cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        vocab = model.get_output_embeddings().weight.shape[0]
        self.rows, self.length, self.vocab, self.device = rows, length, vocab, device
        self.cache = StaticCache(config=cfg, max_cache_len=length)
        for layer in self.cache.layers:
            _init_static_layer(layer, rows, kv_heads, head_dim, length, dtype, device)
        self.tok = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.idx = torch.zeros(1, dtype=torch.long, device=device)
        self.attn = torch.zeros(rows, length, dtype=torch.bool, device=device)
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        self.unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        self.noise = torch.ones(rows, vocab, dtype=torch.float32, device=device)
        self.noise_k = torch.ones(rows, min(top_k, vocab), dtype=torch.float32, device=device)
        self.out = torch.zeros(rows, length, dtype=torch.long, device=device)


def _init_static_layer(layer, rows: int, heads: int, head_dim: int, length: int, dtype, device) -> None:
    """Allocate a StaticLayer's tensors up front (its lazy_initialization, without marking the
    tensors as static addresses: that would tie a compiled graph to these very tensors, and the
    warm-up compiles on its own scratch Slots)."""
    layer.device = device
    layer.batch_size, layer.num_heads = rows, heads
    layer.k_head_dim = layer.v_head_dim = head_dim
    layer.keys = torch.zeros(rows, heads, length, head_dim, dtype=dtype, device=device)
    layer.values = torch.zeros(rows, heads, length, head_dim, dtype=dtype, device=device)
    layer.cumulative_length = torch.zeros((), dtype=torch.long, device=device)
    layer.is_initialized = True


@dataclass
class Sampling:
    """The sampling controls as device tensors (changing their values never recompiles)."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    penalty: torch.Tensor
    eos: torch.Tensor
    pad: torch.Tensor

    @classmethod
    def make(cls, temperature: float, top_p: float, penalty: float, eos_ids: list[int], pad_id: int,
             device) -> "Sampling":
        f = lambda v: torch.tensor(float(v), dtype=torch.float32, device=device)  # noqa: E731
        greedy = float(temperature) <= 0.0
        return cls(f(0.0 if greedy else temperature), f(1.0 if greedy else top_p), f(penalty),
                   torch.tensor(sorted(set(eos_ids)) or [-1], dtype=torch.long, device=device),
                   torch.tensor(int(pad_id), dtype=torch.long, device=device))

    @property
    def greedy(self) -> bool:
        return bool(self.temperature.item() <= 0)


# ----------------------------------------------------------------------------- prefill + step
def prefill(model: torch.nn.Module, s: Slots, input_ids: torch.Tensor, attention: torch.Tensor,
            sp: Sampling) -> None:
    """Run the prompt, fill the bucket's cache for all its rows and pick every row's first token.

    input_ids/attention: (n, P) left-padded, n <= s.rows. Rows beyond n copy row 0."""
    from transformers import DynamicCache

    n, plen = input_ids.shape
    shared = n == 1 or (bool(attention.all()) and bool((input_ids == input_ids[:1]).all()))
    src, src_mask = (input_ids[:1], attention[:1]) if shared else (input_ids, attention)
    pos = (src_mask.long().cumsum(-1) - 1).masked_fill(src_mask == 0, 1)
    dyn = DynamicCache(config=model.config)
    out = model(input_ids=src, attention_mask=src_mask, position_ids=pos, cache=dyn, use_cache=True,
                logits_to_keep=1)
    rows = torch.arange(s.rows, device=s.device)
    index = torch.zeros_like(rows) if shared else torch.where(rows < n, rows, torch.zeros_like(rows))
    for layer, dl in zip(s.cache.layers, dyn.layers):
        layer.keys[:, :, :plen].copy_(dl.keys.index_select(0, index))
        layer.values[:, :, :plen].copy_(dl.values.index_select(0, index))
        layer.cumulative_length.fill_(plen)
    s.attn.zero_()
    s.attn[:, :plen] = src_mask.bool().index_select(0, index)
    ids = src.masked_fill(src_mask == 0, s.vocab).index_select(0, index)
    seen = torch.zeros(s.rows, s.vocab + 1, dtype=torch.bool, device=s.device)
    seen.scatter_(1, ids, True)
    s.seen.copy_(seen[:, : s.vocab])
    logits = out.logits[:, -1].float().index_select(0, index)
    s.unfinished.fill_(True)
    s.unfinished[n:] = False  # bucket padding rows write padding
    s.pos.copy_(src_mask.long().sum(-1, keepdim=True).index_select(0, index))
    s.idx.fill_(plen)
    s.out[:, 0] = commit(pick_next(logits, s, sp), s, sp)


def pick_next(logits: torch.Tensor, s: Slots, sp: Sampling,
              fast: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The next tokens: the top-k draw where it is exact, the full-sort draw for the other rows."""
    if fast is None:
        if not sp.greedy:
            s.noise_k.exponential_()
        fast = choose_next_topk(logits, s.seen, sp.temperature, sp.top_p, sp.penalty, s.noise_k)
    nxt, exact = fast
    if bool(exact.all()):
        return nxt
    bad = (~exact).nonzero().squeeze(1)
    noise = s.noise[: bad.numel()].exponential_()
    nxt = nxt.clone()
    nxt[bad] = choose_next(logits[bad], s.seen[bad], sp.temperature, sp.top_p, sp.penalty, noise)
    return nxt


def commit(nxt: torch.Tensor, s: Slots, sp: Sampling) -> torch.Tensor:
    """generate's bookkeeping for the chosen tokens: padding for finished rows, EOS, penalty table."""
    nxt = torch.where(s.unfinished, nxt, sp.pad)
    s.unfinished &= ~(nxt[:, None] == sp.eos[None]).any(-1)
    s.seen.scatter_(1, nxt[:, None], True)
    s.tok.copy_(nxt[:, None])
    return nxt


def decode_step(model: torch.nn.Module, cache, tok: torch.Tensor, pos: torch.Tensor, attn: torch.Tensor,
                idx: torch.Tensor, seen: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                penalty: torch.Tensor, noise_k: torch.Tensor):
    """One forward for every row at fixed shapes (the compiled graph): writes the cache slot,
    advances positions and draws the next tokens through the top-k (see choose_next_topk).
    Returns (logits, tokens, exact)."""
    attn.index_fill_(1, idx, True)
    out = model(input_ids=tok, position_ids=pos, attention_mask=attn[:, None, None, :], cache=cache,
                use_cache=True, inkloop_decode=True)
    pos.add_(1)
    idx.add_(1)
    logits = out.logits[:, -1].float()
    nxt, exact = choose_next_topk(logits, seen, temperature, top_p, penalty, noise_k)
    return logits, nxt, exact


def run_decode(step: Callable, model: torch.nn.Module, s: Slots, input_ids: torch.Tensor,
               attention: torch.Tensor, max_new_tokens: int, sp: Sampling, row_done: RowDone | None = None,
               on_tokens: Callable[[list[list[int]]], None] | None = None, check_every: int = 4) -> torch.Tensor:
    """Decode up to max_new_tokens for the n rows of input_ids; returns (n, T) new token ids, each
    row padded with sp.pad after it stopped (EOS or row_done), T <= max_new_tokens as in generate.

    on_tokens(rows' new tokens so far, stopped rows cut) is called every check_every tokens."""
    n = input_ids.shape[0]
    pad = int(sp.pad.item())
    eos = set(sp.eos.tolist())
    greedy = sp.greedy
    prefill(model, s, input_ids, attention, sp)
    finished_at: list[int | None] = [None] * n
    checked = 0  # tokens already looked at by the stop rules
    have = 1  # tokens written to s.out (the prefill wrote the first)
    while True:
        if have % check_every == 0 or have == max_new_tokens:
            toks = s.out[:n, :have].tolist()
            for r in range(n):
                if finished_at[r] is not None:
                    continue
                row = toks[r]
                for j in range(checked, have):
                    if row[j] in eos or (row_done is not None and row_done(row[: j + 1])):
                        finished_at[r] = j  # generate would have stopped this row here
                        if j + 1 < have:
                            s.out[r, j + 1:have] = pad
                            row[j + 1:] = [pad] * (have - j - 1)
                        s.unfinished[r] = False
                        break
            checked = have
            if on_tokens is not None:
                on_tokens(toks)
            if all(f is not None for f in finished_at):
                have = max(finished_at) + 1  # type: ignore[type-var]
                break
        if have == max_new_tokens:
            break
        if not greedy:
            s.noise_k.exponential_()
        logits, nxt, exact = step(model, s.cache, s.tok, s.pos, s.attn, s.idx, s.seen, sp.temperature,
                                  sp.top_p, sp.penalty, s.noise_k)
        s.out[:, have] = commit(pick_next(logits, s, sp, (nxt, exact)), s, sp)
        have += 1
    return s.out[:n, :have].clone()


# ----------------------------------------------------------------------------- the decoder
@dataclass
class WarmRecord:
    """One background compilation: which bucket, for which model state, how long it took."""

    rows: int
    length: int
    seconds: float
    ok: bool
    error: str = ""


class FastDecoder:
    """The fast path for one process: buckets, the compiled step, and the background compiler.

    `decode(...)` returns None when the bucket for the request is not compiled yet for the
    current model state (it is then queued for the background thread) or does not exist."""

    def __init__(self, settings: DecodeSettings | None = None):
        self.settings = settings or DecodeSettings()
        st = self.settings
        if st.compile:
            kw: dict[str, object] = {"backend": st.backend, "dynamic": False, "fullgraph": True}
            if st.mode:
                kw["mode"] = st.mode
            if st.inductor_options:
                kw["options"] = dict(st.inductor_options)
            self.step = torch.compile(decode_step, **kw)
            cfg = torch._dynamo.config
            limit = max(64, len(st.row_buckets) * len(st.length_buckets) * 4)
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(cfg, name) and getattr(cfg, name) < limit:
                    setattr(cfg, name, limit)
        else:
            self.step = decode_step
        self._slots: dict[tuple[int, int], Slots] = {}
        self._ready: set[tuple[Hashable, int, int]] = set()
        self._queued: set[tuple[Hashable, int, int]] = set()
        self._todo: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._quiet = threading.Condition(self._lock)
        self._inflight = 0  # generations running now (see serving)
        self._served = 0  # generations finished since start-up
        self._last_end = 0.0  # time.monotonic() when the last one finished
        self.warm_log: list[WarmRecord] = []
        self.epoch = 0  # bumped when the model's structure changes under a compile in flight

    # ------------------------------------------------------------------ buckets and readiness
    def bucket(self, rows: int, total_len: int) -> tuple[int, int] | None:
        r = pick_bucket(rows, self.settings.row_buckets)
        n = pick_bucket(total_len, self.settings.length_buckets)
        return None if r is None or n is None else (r, n)

    def ready(self, key: Hashable, rows: int, length: int) -> bool:
        return not self.settings.compile or (key, rows, length) in self._ready

    def request(self, key: Hashable, model: torch.nn.Module, rows: int, length: int) -> None:
        """Queue a background compile of (rows, length) for this model state (once)."""
        k = (key, rows, length)
        if not self.settings.compile:
            return  # nothing to compile: every bucket is ready
        with self._lock:
            if k in self._ready or k in self._queued:
                return
            self._queued.add(k)
        self._todo.put((key, model, rows, length))
        self._start_thread()

    def warm_up(self, key: Hashable, model: torch.nn.Module) -> None:
        """Queue the settings' warm-up buckets (called right after start-up and after a model
        change that needs a new graph)."""
        for rows, length in self.settings.warmup:
            self.request(key, model, rows, length)

    def invalidate(self) -> None:
        """The model's modules are about to change (an adapter is injected or removed): compiles
        in flight were traced on the old structure and must not be marked ready."""
        with self._lock:
            self.epoch += 1

    @contextlib.contextmanager
    def serving(self):
        """Around every generation request of the process (Generator.suggest enters it around all
        rounds of a request; nesting is fine): no compile starts while one runs, nor within
        settings.quiet_seconds after one, nor before the first has finished
        (settings.after_first_request). A compile already running cannot be paused; it runs on
        beside the request."""
        with self._lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                self._served += 1
                self._last_end = time.monotonic()
                self._quiet.notify_all()

    def _wait_quiet(self) -> None:
        """Block the compile thread until no generation runs nor ran within quiet_seconds (and, if
        so set, one has finished)."""
        st = self.settings
        with self._lock:
            while True:
                since = time.monotonic() - self._last_end
                settled = since >= st.quiet_seconds if self._served else not st.after_first_request
                if self._inflight == 0 and settled:
                    return
                self._quiet.wait(timeout=max(0.05, min(1.0, st.quiet_seconds - since)))

    def wait_ready(self, key: Hashable, rows: int, length: int, timeout: float = 600.0) -> bool:
        """Block until a bucket is ready (tests and benchmarks; the request path never waits)."""
        t0 = time.perf_counter()
        while not self.ready(key, rows, length):
            if time.perf_counter() - t0 > timeout:
                return False
            time.sleep(0.05)
        return True

    def wait_idle(self, timeout: float = 1800.0) -> bool:
        """Block until no compile is queued or running (benchmarks: every bucket a warm pass asked
        for is then ready, or failed and logged in warm_log). False on timeout."""
        t0 = time.perf_counter()
        while True:
            with self._lock:
                if not self._queued:
                    return True
            if time.perf_counter() - t0 > timeout:
                return False
            time.sleep(0.1)

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._worker, name="inkloop-compile", daemon=True)
                self._thread.start()

    def _worker(self) -> None:
        if self.settings.background_nice and hasattr(os, "setpriority"):
            try:  # Linux: a thread id is a PRIO_PROCESS target, so only this thread is niced
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(self.settings.background_nice))
            except OSError:
                pass
        while True:
            try:
                key, model, rows, length = self._todo.get(timeout=5.0)
            except queue.Empty:
                return
            self._wait_quiet()
            t0 = time.perf_counter()
            epoch = self.epoch
            interval = sys.getswitchinterval()
            try:
                if self.settings.compile_switch_interval > 0:
                    sys.setswitchinterval(self.settings.compile_switch_interval)
                try:
                    self._compile(model, rows, length)
                finally:
                    sys.setswitchinterval(interval)
                rec = WarmRecord(rows, length, time.perf_counter() - t0, True)
                with self._lock:
                    if epoch == self.epoch and model_key(model) == key:
                        self._ready.add((key, rows, length))
                    else:  # traced while the model changed: compile again (queued below)
                        rec.ok, rec.error = False, "model changed during the compile"
            except Exception as e:  # noqa: BLE001 - the fallback keeps serving; logged and recorded
                log.exception("fast decode: compiling rows=%s length=%s failed", rows, length)
                rec = WarmRecord(rows, length, time.perf_counter() - t0, False, repr(e))
            self.warm_log.append(rec)  # before it leaves _queued: wait_idle then sees every record
            with self._lock:
                if rec.error == "model changed during the compile" and model_key(model) == key:
                    self._todo.put((key, model, rows, length))  # compile again; it stays queued
                else:
                    self._queued.discard((key, rows, length))
            log.info("fast decode: rows=%s length=%s ready=%s in %.1f s", rows, length, rec.ok, rec.seconds)

    def _compile(self, model: torch.nn.Module, rows: int, length: int) -> None:
        """Trace/compile the step for one bucket by decoding a few dummy tokens on scratch Slots
        (the request's Slots may be in use; graphs depend on shapes, not on these tensors)."""
        install_decode_attention(model)
        scratch = Slots(model, rows, length, self.settings.top_k)
        ids = torch.full((1, 8), 1, dtype=torch.long, device=scratch.device)
        # greedy: the same graph as sampling (temperature is a tensor) and it draws no random
        # numbers, so seeded requests served meanwhile stay reproducible
        sp = Sampling.make(0.0, 0.95, 1.1, [], 0, scratch.device)
        with torch.no_grad():
            run_decode(self.step, model, scratch, ids, torch.ones_like(ids), 3, sp, check_every=1000)

    def slots(self, model: torch.nn.Module, rows: int, length: int) -> Slots:
        s = self._slots.get((rows, length))
        if s is None:
            install_decode_attention(model)
            s = self._slots[(rows, length)] = Slots(model, rows, length, self.settings.top_k)
        return s

    # ------------------------------------------------------------------ the request path
    def decode(self, key: Hashable, model: torch.nn.Module, input_ids: torch.Tensor, attention: torch.Tensor,
               max_new_tokens: int, sp: Sampling, row_done: RowDone | None = None,
               on_tokens: Callable[[list[list[int]]], None] | None = None) -> torch.Tensor | None:
        """New tokens for each row (see run_decode), or None when this shape is not ready (queued)."""
        n, plen = input_ids.shape
        b = self.bucket(n, plen + max_new_tokens)
        if b is None:
            return None
        rows, length = b
        if not self.ready(key, rows, length):
            self.request(key, model, rows, length)
            return None
        s = self.slots(model, rows, length)
        with torch.no_grad():
            return run_decode(self.step, model, s, input_ids, attention, max_new_tokens, sp, row_done, on_tokens,
                              self.settings.check_every)


def model_key(model: torch.nn.Module) -> Hashable:
    """What a compiled step depends on besides shapes: the module object and, through peft, the
    active adapter's structure (rank, scaling, targets). Same key = the graph can be reused:
    an adapter whose weights were copied in place keeps its key."""
    cfg = getattr(model, "peft_config", None)
    if not cfg:
        return (id(model),)
    parts = []
    for name in sorted(cfg):
        c = cfg[name]
        parts.append((name, getattr(c, "r", None), getattr(c, "lora_alpha", None),
                      tuple(sorted(getattr(c, "target_modules", None) or ())), getattr(c, "use_rslora", None),
                      getattr(c, "use_dora", None)))
    active = getattr(model, "active_adapters", ())
    if callable(active):  # the base model under a PeftModel: transformers' method, not peft's list
        try:
            active = active()
        except ValueError:
            active = ()
    return (id(model), tuple(parts), tuple(active or ()))
