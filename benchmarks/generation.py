"""Generation speed side by side in one run: transformers' generate, the fast decode path
(assistant.lm.decode), llama.cpp on the bundled GGUF, and the memory-bandwidth floor.

Every configuration writes N rows x 64 new tokens (EOS suppressed, so all write 64) after one
prompt of about 200 tokens, sampled as the Generator samples (temperature 0.8, top_p 0.95,
top_k 0, repetition penalty 1.15). The rows of the table are measured in turns (one of each, then
again, --reps times) and the median is printed, so a busy machine slows them alike.

- generate: `model.generate` of the N rows as one batch (what the Generator did before).
- fast path: `FastDecoder.decode` after its buckets were compiled (compile time printed apart).
- llama.cpp: `llama-cpp-python` (a benchmark-only extra: `pip install llama-cpp-python`, built
  from its source distribution) on the bundled Q4 GGUF, the N completions one after another as
  its high-level API offers (the prompt's evaluation is reused between them), --threads threads.
  A short completion runs first in a child process: a build that dies there (on this machine a
  native build's AMX kernels stop the process with SIGILL, "invalid opcode" at `tileloadd`) skips
  the row with the reason instead of killing the benchmark. Such a build works again without AMX:
  `CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
  -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" pip install --force-reinstall --no-deps llama-cpp-python`.
- floor: copying a buffer the size of the bf16 weights once per token (64 copies): decoding a
  step for a batch reads every weight at least once.

    PYTHONPATH=. python benchmarks/generation.py [--rows 4,8,12,16] [--reps 3] [--threads 2]
        [--mode max-autotune-no-cudagraphs] [--cold]

--cold also measures, in a fresh process, the time from process start to the first K=4 x 64
suggestion (served by generate; as in `serve`, the warm-up compiles start after it, see
DecodeSettings.after_first_request) and to the moment every warm-up bucket is ready, then the
first request the fast path serves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DRAFT = (
    "The rain had not stopped for three days. The river rose a little more each night, and the town "
    "waited behind its sandbags and its shutters, listening. Mara kept the lamp lit in the ferry office "
    "even though no ferry had crossed since Sunday. She told herself it was for the stranded travellers, "
    "the ones who still came down the hill road with their suitcases and their questions, but the truth "
    "was simpler: the light made the water look smaller. At nine the telephone rang. It was her brother, "
    "calling from the far bank, and behind his voice she could hear the roar of the weir and something "
    "else, a low knocking, like a boat that had come loose and was striking the pier again and again."
)
NEW = 64
SAMPLING = dict(temperature=0.8, top_p=0.95, repetition_penalty=1.15)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def prompt_ids(tok):
    from assistant.lm.prompts import build_prompt, render

    text = render(build_prompt("continue", DRAFT), tok)
    return text, tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- the contenders
def run_generate(model, tok, ids, n):
    import torch

    x = ids.expand(n, -1).to(model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=NEW, min_new_tokens=NEW,
                             do_sample=True, top_k=0, pad_token_id=tok.pad_token_id, **SAMPLING)
    assert out.shape[1] - x.shape[1] == NEW


def run_fast(fd, key, model, tok, ids, n):
    import torch

    from assistant.lm.decode import Sampling

    x = ids.expand(n, -1).to(model.device)
    sp = Sampling.make(SAMPLING["temperature"], SAMPLING["top_p"], SAMPLING["repetition_penalty"], [],
                       tok.pad_token_id, model.device)
    out = fd.decode(key, model, x, torch.ones_like(x), NEW, sp)
    assert out is not None and out.shape == (n, NEW), "fast path not ready"


LLAMA_PROBE = r"""
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False, seed=0)
print(llm.create_completion("Once upon a time", max_tokens=4)["usage"]["completion_tokens"])
"""


def llama_or_reason(threads: int):
    try:
        from llama_cpp import Llama
    except ImportError as e:
        return None, f"llama-cpp-python is not installed ({e}); `pip install llama-cpp-python` builds it"
    from assistant.lm.models import bundled_gguf

    probe = subprocess.run([sys.executable, "-c", LLAMA_PROBE, str(bundled_gguf())], capture_output=True, text=True)
    if probe.returncode != 0:
        how = f"signal {-probe.returncode}" if probe.returncode < 0 else f"exit {probe.returncode}"
        return None, (f"llama.cpp died on a 4-token completion ({how}: {probe.stderr.strip()[-300:]}); "
                      "see this file's docstring for a build without AMX")
    try:
        llm = Llama(model_path=str(bundled_gguf()), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                    n_batch=512, verbose=False, seed=0)
    except Exception as e:  # noqa: BLE001 - reported as the row's skip reason
        return None, f"llama.cpp could not load the GGUF: {e}"
    return llm, ""


def run_llama(llm, prompt_text, n):
    eos = llm.token_eos()
    for _ in range(n):
        out = llm.create_completion(prompt_text, max_tokens=NEW, temperature=SAMPLING["temperature"],
                                    top_p=SAMPLING["top_p"], top_k=0, repeat_penalty=SAMPLING["repetition_penalty"],
                                    logit_bias={eos: -1e9})
        assert out["usage"]["completion_tokens"] == NEW, out["usage"]


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * 2  # bf16
    return total


def run_floor(src, dst):
    for _ in range(NEW):
        dst.copy_(src)


# ----------------------------------------------------------------------------- cold start
COLD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from assistant.lm.config import GenerationSettings, ModelSettings
from assistant.lm.generate import Generator
from assistant.lm.decode import DecodeSettings, model_key
from assistant.lm.models import load_lm
from assistant.lm.prompts import build_prompt
lm = load_lm(ModelSettings(device="cpu", num_threads=int(sys.argv[2])))
g = Generator(lm.model, lm.tokenizer, device=lm.device)
t_loaded = time.perf_counter() - t0
fd = g.start_fast_path(DecodeSettings())
p = build_prompt("continue", sys.argv[3])
gen = GenerationSettings(k=4, max_new_tokens=64, seed=1)
g.suggest(p, sys.argv[3], gen)
t_first = time.perf_counter() - t0
from assistant.lm.prompts import render
plen = len(lm.tokenizer(render(p, lm.tokenizer), add_special_tokens=False)["input_ids"])
rows, length = fd.bucket(4, plen + 64)
fd.wait_ready(model_key(g.model), rows, length, timeout=1800)
while len(fd.warm_log) < len(fd.settings.warmup):  # every warm-up bucket, so the next request runs alone
    time.sleep(0.1)
t_ready = time.perf_counter() - t0
t1 = time.perf_counter(); g.suggest(p, sys.argv[3], gen); t_fast = time.perf_counter() - t1
print(json.dumps(dict(loaded=t_loaded, first=t_first, ready=t_ready, fast_request=t_fast,
                      compile=[r.seconds for r in fd.warm_log])))
"""


def cold(threads: int) -> dict:
    p = subprocess.run([sys.executable, "-c", COLD, str(ROOT), str(threads), DRAFT], capture_output=True, text=True)
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:  # (a non-zero exit after the JSON line is the known abort at interpreter exit)
        raise RuntimeError(f"exit {p.returncode}: {p.stderr[-3000:]}")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="4,8,12,16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default=None, help="torch.compile mode of the fast path")
    ap.add_argument("--cpp-wrapper", action="store_true", help="inductor cpp_wrapper for the fast path")
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--cold-only", action="store_true", help="only the cold-start measurement")
    args = ap.parse_args()
    if args.cold_only:
        print_cold(cold(args.threads))
        return 0
    rows = [int(r) for r in args.rows.split(",")]

    import torch

    from assistant.lm.config import ModelSettings
    from assistant.lm.decode import DecodeSettings, FastDecoder, model_key, pick_bucket
    from assistant.lm.models import load_lm

    lm = load_lm(ModelSettings(device="cpu", num_threads=args.threads))
    model, tok = lm.model, lm.tokenizer
    text, ids = prompt_ids(tok)
    print(f"model {lm.name} {lm.dtype}, {torch.get_num_threads()} threads, prompt {ids.shape[1]} tokens, "
          f"{NEW} new tokens, load {loadavg()}")

    options = (("cpp_wrapper", True),) if args.cpp_wrapper else ()
    settings = DecodeSettings(mode=args.mode, inductor_options=options, row_buckets=tuple(sorted(set(rows))),
                              background_nice=0, after_first_request=False)
    length = pick_bucket(ids.shape[1] + NEW, settings.length_buckets)
    settings.warmup = tuple((r, length) for r in sorted(set(rows)))
    fd = FastDecoder(settings)
    key = model_key(model)
    t0 = time.perf_counter()
    fd.warm_up(key, model)
    for r in rows:
        assert fd.wait_ready(key, r, length, timeout=3600), fd.warm_log
    compile_s = {w.rows: w.seconds for w in fd.warm_log}
    print(f"fast path compiled in {time.perf_counter() - t0:.0f} s "
          f"({', '.join(f'{r} rows: {s:.0f} s' for r, s in compile_s.items())}), mode={args.mode or 'default'}"
          f"{', cpp_wrapper' if args.cpp_wrapper else ''}", flush=True)

    llm, skip = (None, "--no-llama") if args.no_llama else llama_or_reason(args.threads)
    nbytes = weight_bytes(model)
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)

    contenders = {"generate": lambda n: run_generate(model, tok, ids, n),
                  "fast path": lambda n: run_fast(fd, key, model, tok, ids, n)}
    if llm is not None:
        contenders["llama.cpp"] = lambda n: run_llama(llm, text, n)
    for f in contenders.values():  # one untimed call of each (allocations, llama.cpp's first evaluation)
        f(rows[0])
    times: dict[tuple[str, int], list[float]] = {}
    floor: list[float] = []
    for rep in range(args.reps):
        print(f"round {rep + 1}/{args.reps}, load {loadavg()}", flush=True)
        t = time.perf_counter()
        run_floor(src, dst)
        floor.append(time.perf_counter() - t)
        for n in rows:
            for name, f in contenders.items():
                t = time.perf_counter()
                f(n)
                times.setdefault((name, n), []).append(time.perf_counter() - t)
                print(f"  {name} {n} rows: {times[(name, n)][-1]:.2f} s", flush=True)
    fl = statistics.median(floor)
    print(f"\nload after: {loadavg()}; weights {nbytes / 1e6:.0f} MB bf16; floor = {NEW} copies of them "
          f"= {fl:.2f} s ({nbytes * NEW / fl / 1e9:.1f} GB/s read+write)\n")
    print("| what | rows × tokens | wall s | tokens/s | × floor |")
    print("|---|---|---|---|---|")
    print(f"| bandwidth floor (copy bf16 weights once per token) | any × {NEW} | {fl:.2f} | – | 1.0 |")
    for n in rows:
        for name in contenders:
            m = statistics.median(times[(name, n)])
            print(f"| {name} | {n} × {NEW} | {m:.2f} | {n * NEW / m:.0f} | {m / fl:.1f} |")
        if llm is None:
            print(f"| llama.cpp | {n} × {NEW} | skipped: {skip} | | |")
    g4 = statistics.median(times[("generate", rows[0])])
    print("\nratios (medians of this run):")
    for n in rows:
        f = statistics.median(times[("fast path", n)])
        line = f"  {n} rows: fast path {f:.2f} s = {f / g4:.2f} × generate {rows[0]} rows, {f / fl:.2f} × floor"
        if llm is not None:
            line += f", {f / statistics.median(times[('llama.cpp', n)]):.2f} × llama.cpp"
        print(line)

    if args.cold:
        print_cold(cold(args.threads))
    return 0


def print_cold(c: dict) -> None:
    print(f"\ncold start (fresh process): model loaded {c['loaded']:.1f} s; first K=4 × 64 suggestion "
              f"(generate; the warm-up compiles after it) at {c['first']:.1f} s; fast path ready at "
              f"{c['ready']:.1f} s (compile {', '.join(f'{s:.0f}' for s in c['compile'])} s); first fast-path "
              f"request {c['fast_request']:.2f} s; load {loadavg()}")


if __name__ == "__main__":
    raise SystemExit(main())
