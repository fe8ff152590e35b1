"""Which frozen representation lets a reward head learn a taste from 150 ratings? Features beyond MiniLM, measured.

The reward model's head reads MiniLM sentence embeddings plus text statistics
(reward.features). Issue 14 asks to try features beyond MiniLM, the frozen reference LM's hidden
states first. This benchmark compares representations under one simple, identical learner, so the
representation is the only thing that differs:

1. a pool of the base model's own samples (the texts a person rates before any learning): for
   every prompt of assets/prompts.json (train and held-out), ``samples`` seeded draws through the
   Generator (K = samples, the prompt as asked); cached as JSON under --out;
2. per text: ``minilm`` (the sentence embedding the reward model uses, unit norm), ``stats``
   (reward.features.text_stats: lengths, sentence shape, repetition, ...), ``lm<L>`` (the
   reference SmolLM2's hidden states after layer L, mean-pooled over the text's own tokens; the
   text alone, no prompt), ``wvec`` (the reward model's opt-in block,
   reward.features.word_vector_sums: MiniLM's embedding of each content word on its own, summed
   over the text / 8: a bag of word vectors in which words of one kind, colours or
   sounds, lie near each other, so a head can generalise from the few it saw rated);
3. per rater and seed: the pool's prompts dealt into requests of four texts; 38 requests (152
   ratings) are starred by the rater exactly as simulate does (reward.eval.raters.Rater.stars), the
   rest are test requests; a ridge head on each representation (every block standardised;
   lambda from a grid by 4-fold CV over the training requests, on star error) predicts the stars;
4. ``true acc``: the share of within-request pairs of different hidden utility, over the test
   requests, that the head orders as the utility does (reward.train.pair_accuracy; what
   benchmarks/rm_from_logs.py reports for the real trainer).

A ridge head is not the product's trainer (BT pairs + pointwise targets, an anchored ensemble):
this ranks representations, and only a representation that wins here is worth a feature block.

    PYTHONPATH=. python benchmarks/rm_representations.py [--raters vivid,upbeat] [--seeds 0,1,2,3,4,5]
        [--samples 8] [--layers 6,12,18,24,30] [--threads 2] [--out benchmarks/.rm_representations]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


# ----------------------------------------------------------------------------- pure parts
def standardise(x: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit variance (constant columns stay 0)."""
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Weights and intercept of ridge regression (the intercept unpenalised)."""
    mu, ym = x.mean(0), y.mean()
    a = x - mu
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y - ym))
    return w, float(ym - mu @ w)


def fit_head(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 4) -> tuple[np.ndarray, float]:
    """Ridge with lambda chosen from LAMBDAS by grouped k-fold CV on squared error."""
    ug = np.unique(groups)
    fold_of = {g: i % folds for i, g in enumerate(ug)}
    f = np.array([fold_of[g] for g in groups])
    best, best_err = LAMBDAS[0], np.inf
    for lam in LAMBDAS:
        err = 0.0
        for k in range(folds):
            tr, te = f != k, f == k
            w, b = ridge(x[tr], y[tr], lam)
            err += float(((x[te] @ w + b - y[te]) ** 2).sum())
        if err < best_err:
            best, best_err = lam, err
    return ridge(x, y, best)


def within_request_pairs(scores: np.ndarray, utility: np.ndarray, requests: Sequence[Sequence[int]]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(score of the better text, score of the worse) for every within-request pair of different utility."""
    hi, lo = [], []
    for req in requests:
        for i in req:
            for j in req:
                if utility[i] > utility[j]:
                    hi.append(scores[i])
                    lo.append(scores[j])
    return np.asarray(hi), np.asarray(lo)


# ----------------------------------------------------------------------------- model parts
@dataclass
class Pool:
    prompt_ids: list[str]
    texts: list[str]


def draw_pool(lm, out: Path, samples: int, max_new_tokens: int) -> Pool:
    cache = out / f"pool-{samples}x{max_new_tokens}.json"
    if cache.exists():
        d = json.loads(cache.read_text())
        return Pool(d["prompt_ids"], d["texts"])
    from assistant.lm.config import GenerationSettings
    from assistant.lm.generate import Generator
    from assistant.lm.prompts import build_prompt
    from reward.eval.prompts import load_prompts

    gen = Generator(lm.model, lm.tokenizer)
    ids, texts = [], []
    for i, ep in enumerate(load_prompts(split=None)):
        g = GenerationSettings(k=samples, seed=1000 + i, max_new_tokens=max_new_tokens, fast_path=False)
        for t in gen.suggest(build_prompt(ep.mode, ep.text, ep.options), ep.text, g).texts[:samples]:
            ids.append(ep.id)
            texts.append(t)
        print(f"pool: prompt {i + 1}, {len(texts)} texts", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"prompt_ids": ids, "texts": texts}))
    return Pool(ids, texts)


def lm_hidden(lm, texts: Sequence[str], layers: Sequence[int], batch: int = 16) -> dict[int, np.ndarray]:
    import torch

    tok, model = lm.tokenizer, lm.model
    out: dict[int, list[np.ndarray]] = {L: [] for L in layers}
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(list(texts[i:i + batch]), return_tensors="pt", padding=True, truncation=True, max_length=96)
            hs = model(**enc, output_hidden_states=True).hidden_states
            m = enc["attention_mask"].unsqueeze(-1).float()
            for L in layers:
                out[L].append(((hs[L].float() * m).sum(1) / m.sum(1)).numpy())
    return {L: np.concatenate(v) for L, v in out.items()}


def representations(lm, texts: Sequence[str], layers: Sequence[int]) -> dict[str, np.ndarray]:
    from assistant.lm.config import ModelSettings
    from assistant.lm.models import load_embedder
    from reward.features import text_stats, word_vector_sums

    emb = load_embedder(ModelSettings())

    def embed(xs: Sequence[str]) -> np.ndarray:
        return np.asarray(emb.encode(list(xs), batch_size=256, normalize_embeddings=True), np.float32)

    minilm = embed(texts)
    words = word_vector_sums(texts, embed, minilm.shape[1])  # the reward model's wvec block
    stats = np.stack([text_stats("", t) for t in texts])
    hidden = lm_hidden(lm, texts, layers)
    base = [standardise(minilm), standardise(stats)]
    reps = {"minilm+stats (the reward model's inputs)": np.hstack(base),
            "minilm+stats+wvec": np.hstack(base + [standardise(words)])}
    for L, h in hidden.items():
        reps[f"lm{L}+stats"] = np.hstack([standardise(h), standardise(stats)])
    mid = sorted(hidden)[len(hidden) // 2]
    reps[f"minilm+stats+lm{mid}"] = np.hstack(base + [standardise(hidden[mid])])
    return reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raters", default="concise,vivid,upbeat,keywords,firstperson,alliteration")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--samples", type=int, default=8, help="base samples per prompt (two requests of four)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--layers", default="6,12,18,24,30")
    ap.add_argument("--train-requests", type=int, default=38, help="requests of four the rater stars (38 = 152 ratings)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / ".rm_representations"))
    a = ap.parse_args()

    import torch

    from assistant.lm.config import ModelSettings
    from assistant.lm.models import load_lm
    from reward.eval.prompts import load_prompts
    from reward.eval.raters import make_rater
    from reward.train import pair_accuracy

    torch.set_num_threads(a.threads)
    lm = load_lm(ModelSettings())
    pool = draw_pool(lm, Path(a.out), a.samples, a.max_new_tokens)
    reps = representations(lm, pool.texts, [int(x) for x in a.layers.split(",")])
    fields = {p.id: p.fields() for p in load_prompts(split=None)}
    by_prompt: dict[str, list[int]] = {}
    for i, pid in enumerate(pool.prompt_ids):
        by_prompt.setdefault(pid, []).append(i)
    requests = [idx[j:j + 4] for idx in by_prompt.values() for j in range(0, len(idx) - 3, 4)]
    seeds = [int(s) for s in a.seeds.split(",")]
    raters = a.raters.split(",")
    ratings = {}  # (rater, seed) -> the same ratings for every representation
    for r in raters:
        for seed in seeds:
            rater = make_rater(r, seed=seed)
            u = np.array([rater.utility(t, fields[pid]) for t, pid in zip(pool.texts, pool.prompt_ids)])
            order = np.random.default_rng(seed).permutation(len(requests))
            train = [requests[q] for q in order[:a.train_requests]]
            stars = np.asarray([s for req in train for s in rater.stars(
                [pool.texts[i] for i in req], fields[pool.prompt_ids[req[0]]])], np.float64)
            ratings[r, seed] = (u, np.array([i for req in train for i in req]),
                                np.repeat(np.arange(len(train)), [len(req) for req in train]), stars,
                                [requests[q] for q in order[a.train_requests:]])
    print(f"{len(pool.texts)} texts, {len(requests)} requests of four; {a.train_requests} rated, the rest tested; "
          f"seeds {seeds}\n")
    print("| representation | " + " | ".join(raters) + " | mean |")
    print("|---|" + "---|" * (len(raters) + 1))
    results: dict[str, list[float]] = {}
    for name, x in reps.items():
        row = []
        for r in raters:
            accs = []
            for seed in seeds:
                u, idx, groups, stars, test = ratings[r, seed]
                w, b = fit_head(x[idx], stars, groups)
                accs.append(pair_accuracy(*within_request_pairs(x @ w + b, u, test)))
            row.append(float(np.mean(accs)))
        results[name] = row
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {np.mean(row):.3f} |", flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(json.dumps({"raters": a.raters.split(","), "seeds": seeds,
                                                          "results": results}, indent=1))


if __name__ == "__main__":
    main()
