"""Episodes per second of inkloop's RL update against TRL's RLOOTrainer, side by side.

Same model (bundled SmolLM2-135M-Instruct unless --model), same LoRA config (assistant.config.
LoraSettings), same prompts, same batch (prompts x k completions), same completion length,
temperature, KL coefficient and reward function (a rule-based length + repetition reward, so no
reward model's cost is in either number). Each side runs in its own subprocess so that its peak
resident memory (ru_maxrss) is its own. The first update of each side is a warm-up and is not timed.

TRL is installed only for this benchmark (`pip install trl`); it is not a project dependency.
TRL 1.x no longer ships PPOTrainer in its top-level package, so the comparison is against its
RLOOTrainer (REINFORCE with a leave-one-out baseline over k completions), whose closest match
here is `--algo reinforce` (RLOO baseline); our a2c and ppo are timed too.

    python benchmarks/rl_step.py [--steps 3] [--prompts 4] [--k 4] [--max-new-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [
    ("continue", "The rain had not stopped for three days, and the river was rising faster than anyone expected.", {}),
    ("restyle", "Hey, just checking if you got my email about the budget, we need an answer by Friday.", {"style": "formal"}),
    ("inspire", "", {"keywords": ["lighthouse", "inheritance", "fog"], "inspire_kind": "ideas"}),
    ("continue", "I moved to the coast to be alone, but the man in the next cottage had other plans.", {}),
    ("restyle", "The meeting ran long and nobody agreed on anything.", {"style": "vivid"}),
    ("inspire", "", {"keywords": ["orchard", "letter"], "inspire_kind": "openings"}),
    ("continue", "My father fixed radios in a shop no wider than a hallway.", {}),
    ("inspire", "", {"keywords": ["train", "winter"], "inspire_kind": "ideas"}),
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(args):
    import torch

    from assistant.lm.config import ModelSettings
    from assistant.lm.models import load_lm

    torch.set_num_threads(args.threads)
    return load_lm(ModelSettings(model_path=args.model, device="cpu", dtype=args.dtype))


def rendered_prompts(lm, n: int) -> list[tuple[str, str, str]]:
    from assistant.lm.prompts import build_prompt, render

    out = []
    for mode, text, opts in (PROMPTS * ((n + len(PROMPTS) - 1) // len(PROMPTS)))[:n]:
        out.append((mode, text, render(build_prompt(mode, text, opts), lm.tokenizer)))
    return out


def reward_values(texts) -> list[float]:
    """The shared reward: closeness to 20 words, minus repeated bigrams."""
    from reward.functions import length_term, repetition_term

    return (length_term(texts, [20.0] * len(texts)) + 0.5 * repetition_term(texts)).tolist()


def run_ours(args) -> dict:
    import numpy as np

    from assistant.lm.config import LoraSettings
    from reward.functions import RolloutPrompt
    from reward.rl.config import RLConfig
    from reward.rl.policy import Policy
    from reward.rl.step import TrainerState, rl_step

    lm = load(args)
    prompts = [RolloutPrompt(p, mode, source_text=text) for mode, text, p in rendered_prompts(lm, args.prompts)]
    policy = Policy.from_base(lm.model, lm.tokenizer, LoraSettings())
    cfg = RLConfig(algo=args.algo, k=args.k, prompts_per_step=args.prompts, max_new_tokens=args.max_new_tokens,
                   temperature=0.8, lr=5e-4, kl_coef=0.05, minibatch_size=args.prompts * args.k,
                   ppo_epochs=args.ppo_epochs, clean_texts=False, seed=0)

    def fn(ps, texts, extras=None):
        return np.asarray(reward_values(texts), np.float32)

    state = TrainerState()
    rl_step(policy, state, prompts, fn, cfg)  # warm-up
    t0 = time.perf_counter()
    toks = 0.0
    for _ in range(args.steps):
        m = rl_step(policy, state, prompts, fn, cfg)
        toks += m["rl/response_tokens"]
    dt = time.perf_counter() - t0
    eps = args.steps * args.prompts * args.k
    return {"side": f"inkloop {args.algo}", "episodes_per_s": eps / dt, "seconds_per_step": dt / args.steps,
            "mean_response_tokens": toks / args.steps, "peak_rss_mb": peak_rss_mb()}


def run_trl(args) -> dict:
    try:
        import trl
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import RLOOConfig, RLOOTrainer
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        return {"side": "trl RLOO", "error": f"cannot import TRL: {type(e).__name__}: {e}"}

    from assistant.lm.config import LoraSettings
    from reward.rl.policy import peft_lora_config

    lm = load(args)
    data = Dataset.from_list([{"prompt": p} for _, _, p in rendered_prompts(lm, args.prompts)] * (args.steps + 2))

    def reward_fn(prompts, completions, **kw):
        return reward_values(completions)

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        cfg = RLOOConfig(
            output_dir=out, per_device_train_batch_size=args.prompts * args.k, num_generations=args.k,
            max_completion_length=args.max_new_tokens, temperature=0.8, top_p=1.0, learning_rate=5e-4,
            beta=0.05, max_steps=args.steps + 1, logging_steps=1, report_to="none", save_strategy="no",
            use_cpu=True, bf16=args.dtype != "float32", num_iterations=1, seed=0, disable_tqdm=True,
            dataloader_num_workers=0,
        )
        tr = RLOOTrainer(model=lm.model, reward_funcs=reward_fn, args=cfg, train_dataset=data,
                         processing_class=lm.tokenizer, peft_config=peft_lora_config(LoraSettings()),
                         callbacks=[Clock()])
        t_start = time.perf_counter()
        tr.train()
    if len(times) < 2:
        return {"side": "trl RLOO", "error": f"only {len(times)} steps completed"}
    dt = times[-1] - times[0]
    n = len(times) - 1
    comp_len = [h.get("completions/mean_length") for h in tr.state.log_history if "completions/mean_length" in h]
    return {"side": f"trl {trl.__version__} RLOO", "episodes_per_s": n * args.prompts * args.k / dt,
            "seconds_per_step": dt / n, "mean_response_tokens": sum(comp_len) / len(comp_len) if comp_len else None,
            "peak_rss_mb": peak_rss_mb(), "first_step_s": times[0] - t_start}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="local HF model dir (default: bundled SmolLM2)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--steps", type=int, default=3, help="timed updates per side (after one warm-up)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--ppo-epochs", type=int, default=1, help="epochs for our ppo row (1 = same work as RLOO)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sides", default="reinforce,a2c,ppo,trl", help="comma list of reinforce,a2c,ppo,trl")
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--algo", default="reinforce", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the list of sides this many times (A B A B ...) and keep each side's best: "
                         "on a shared machine this evens out load that changes between sides")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.side:  # child process: one side, JSON on the last stdout line
        res = run_trl(args) if args.side == "trl" else run_ours(args)
        print(json.dumps(res))
        return 0

    rows = []
    for side in args.sides.split(",") * args.rounds:
        cmd = [sys.executable, __file__, "--side", side, "--algo", side if side != "trl" else "reinforce",
               "--steps", str(args.steps), "--prompts", str(args.prompts), "--k", str(args.k),
               "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads),
               "--dtype", args.dtype, "--ppo-epochs", str(args.ppo_epochs)]
        if args.model:
            cmd += ["--model", args.model]
        print(f"running {side} ...", file=sys.stderr, flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        last = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not last:
            tail = (p.stderr or p.stdout).strip().splitlines()[-6:]
            rows.append({"side": side, "error": f"exit {p.returncode}: " + " | ".join(tail)})
        else:
            rows.append(json.loads(last[-1]))
    best: dict[str, dict] = {}
    for r in rows:  # keep each side's fastest round (errors only if every round failed)
        prev = best.get(r["side"])
        if prev is None or ("error" in prev and "error" not in r) or (
            "error" not in r and "error" not in prev and r["episodes_per_s"] > prev["episodes_per_s"]
        ):
            best[r["side"]] = r
    rows = list(best.values())
    trl_row = next((r for r in rows if r["side"].startswith("trl") and "episodes_per_s" in r), None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"batch: {args.prompts} prompts x {args.k} completions, {args.max_new_tokens} new tokens, "
          f"{args.threads} threads, {args.steps} timed steps, best of {args.rounds} round(s) per side")
    print(f"{'side':24s} {'episodes/s':>10s} {'s/step':>8s} {'resp tok':>8s} {'peak RSS MB':>11s} {'vs TRL':>7s}")
    for r in rows:
        if "error" in r:
            print(f"{r['side']:24s} ERROR: {r['error']}")
            continue
        ratio = f"{r['episodes_per_s'] / trl_row['episodes_per_s']:.2f}x" if trl_row else "n/a"
        rt = r.get("mean_response_tokens")
        print(f"{r['side']:24s} {r['episodes_per_s']:10.2f} {r['seconds_per_step']:8.1f} "
              f"{rt if rt is None else round(rt, 1)!s:>8s} {r['peak_rss_mb']:11.0f} {ratio:>7s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
