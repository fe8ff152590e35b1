"""Which reward-model settings learn a simulated rater's taste best from its rating log? Cross-validated.

The logs are the stores benchmarks/learning.py leaves under ``--cells`` (one per rater, run and
seed: 150 ratings of the rater through the app, stars for every candidate and a best pick). For
each log: a grouped 5-fold cross-validation over its requests (a request never straddles a fold);
each variant (RewardTrainConfig overrides) trains on four folds with ``reward.feedback`` exactly as
the learner does, and is measured on the fifth against the rater's hidden, noiseless utility:

- ``true acc``: share of within-request pairs of different utility, over every candidate the
  request drew (shown and, with the reward-guided choice, unshown), that the model orders as the
  utility does;
- ``pick``: the utility of the model's pick (best conservative score, kappa 1) among the drawn
  candidates, minus their mean utility (what the reward-guided choice adds per slot), next to
  ``oracle`` (the best drawn candidate's utility minus the mean).

Variants (VARIANTS): the one-head default, pointwise weights, and 4-head bootstrap ensembles
unanchored (the members' mean scores) or anchored (``ensemble_anchor``, the training default: a
head fitted on all the ratings scores, the bootstrap heads give the spread around it). Measured
with --from-lamp --seeds 0,1,2 (2026-12-01): mean true acc one head 0.699, 4-head unanchored
0.675, anchored 0.710 (README: "Which reward-model settings learn a taste from 150 ratings").
``tie-*`` weigh a best pick over a sibling with the same stars (RewardTrainConfig.tie_pick_weight);
``words`` adds the hashed-words block, ``wvec`` the summed word vectors
(reward.features.word_vector_sums). --from-lamp --seeds 0,1,2 (2026-12-07): true acc / pick gain
tie-1 0.696 / +0.134, tie-0.5 0.705 / +0.134, tie-0.25 (the default now) 0.714 / +0.135, words
0.710 / +0.145, words + tie-0.25 0.725 / +0.149.

No LM is loaded (the texts are in the logs); embeddings are cached in each log's store.

``--from-base FILE --skip-prompts N``: instead of the learning cells' logs, rate the base model's
held-out samples that benchmarks/learning.py saved (base-s*.json) for the held-out prompts from
the N-th on (the learning runs with ``--heldout-limit N`` never judge those), one log per rater
and seed (``--raters``, ``--seeds``): each prompt is one request of its samples, starred and
best-picked by the rater as simulate does.

``--from-lamp STORE``: real literary text instead of model samples. The LAMP-R paragraphs
(../shared/data/lamp, embedded once by benchmarks/reward_real_data.py into its cache store STORE)
are dealt into "requests" of four; each rater and seed rates 150 of them as simulate does (stars
for each, a best pick), the variants train on that log, and are measured on 150 other requests
(600 paragraphs) against the hidden utility: a held-out set much larger than a fold.

    PYTHONPATH=. python benchmarks/rm_from_logs.py --cells /tmp/learn_cells [--variants ...] [--threads 1]
    PYTHONPATH=. python benchmarks/rm_from_logs.py --from-lamp benchmarks/.cache/reward_bench.db
    PYTHONPATH=. python benchmarks/rm_from_logs.py --from-base base-s0-h0x4-t32.json --skip-prompts 25 --out DIR
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path
from time import time_ns

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

VARIANTS = {
    "default": {},
    "pw-0.25": {"pointwise_weight": 0.25},
    "pairs-only": {"pointwise_weight": 0.0},
    "ensemble-4": {"ensemble": 4, "ensemble_anchor": False},
    "ensemble-4+pw-0.25": {"ensemble": 4, "ensemble_anchor": False, "pointwise_weight": 0.25},
    "ensemble-4-anchored": {"ensemble": 4, "ensemble_anchor": True},
    "tie-1": {"tie_pick_weight": 1.0},
    "tie-0.5": {"tie_pick_weight": 0.5},
    "tie-0.25": {"tie_pick_weight": 0.25},
    "tie-0": {"tie_pick_weight": 0.0},
    "words": {"emb_features": ("s", "sc", "words")},
    "words+tie-0.25": {"emb_features": ("s", "sc", "words"), "tie_pick_weight": 0.25},
    "wvec": {"emb_features": ("s", "sc", "wvec")},
}
"""RewardTrainConfig overrides on top of the learner's (LearnerConfig().rm with ensemble 1)."""


def drawn_texts(req) -> list[str]:
    return [s.text for s in req.suggestions] + list(((req.options or {}).get("choice") or {}).get("unshown") or [])


def measure(model, rater, reqs) -> dict[str, float]:
    from reward.eval.prompts import EvalPrompt
    from reward.feedback import context_of
    from reward.select import conservative, member_scores
    from reward.train import pair_accuracy

    better, worse, pick, oracle = [], [], [], []
    for req in reqs:
        texts = drawn_texts(req)
        if len(texts) < 2:
            continue
        f = EvalPrompt(req.mode, req.text, dict(req.options or {})).fields()
        u = rater.utilities(texts, f)
        cons = conservative(member_scores(model, context_of(req), texts), 1.0)
        for i, j in itertools.combinations(range(len(u)), 2):
            if u[i] != u[j]:
                hi, lo = (i, j) if u[i] > u[j] else (j, i)
                better.append(cons[hi])
                worse.append(cons[lo])
        pick.append(u[int(np.argmax(cons))] - u.mean())
        oracle.append(u.max() - u.mean())
    return {"true_acc": pair_accuracy(np.array(better), np.array(worse)), "pairs": len(better),
            "pick": float(np.mean(pick)), "oracle": float(np.mean(oracle))}


def logs_from_base(a) -> str:
    """One store per rater and seed under a.cells: the base held-out samples as rated requests."""
    import json

    from reward.eval.prompts import load_prompts
    from reward.eval.raters import make_rater, rate_suggestions
    from storage.store import Store

    texts = json.loads(Path(a.from_base).read_text())
    prompts = load_prompts(split="heldout")[: len(texts)]
    for rater in a.raters.split(","):
        for seed in (int(x) for x in a.seeds.split(",")):
            d = Path(a.cells) / f"{rater}-base-s{seed}"
            if (d / "inkloop.db").exists():
                continue
            d.mkdir(parents=True, exist_ok=True)
            store, r = Store(d / "inkloop.db"), make_rater(rater, seed=seed)
            for p, ts in list(zip(prompts, texts))[a.skip_prompts:]:
                ts = [t for t in dict.fromkeys(ts) if t.strip()]
                if len(ts) < 2:
                    continue
                req = store.record_request(profile_id="bench", mode=p.mode, text=p.text, options=dict(p.options),
                                           prompt="", policy_version=0, suggestions=ts)
                rate_suggestions(r, p.fields(), [s.id for s in req.suggestions], ts, 10_000, store.add_feedback)
            store.close()
    return a.cells


def lamp_main(a) -> None:
    import dataclasses
    import random

    import torch

    from assistant.lm.config import ModelSettings
    from assistant.lm.models import load_embedder
    from reward.eval.raters import make_rater, rate_suggestions
    from reward.feedback import RewardData, build_training_data
    from reward.loop.config import LearnerConfig
    from reward.train import train_reward_model
    from storage.store import Store

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from reward_real_data import LAMP_CONTEXT, load_lamp, shared_data_dir

    torch.set_num_threads(a.threads)
    embedder = load_embedder(ModelSettings(device="cpu"))
    store = Store(a.from_lamp)
    paras = [p.text for p in load_lamp(shared_data_dir(), 1919, 0).points]
    k, n_log = 4, (a.budget + 3) // 4
    groups = [paras[i : i + k] for i in range(0, len(paras) - k + 1, k)]
    variants = [v for v in a.variants.split(",") if v]
    base = dataclasses.replace(LearnerConfig().rm, ensemble=1)
    stamp = str(time_ns())
    test_reqs = [store.record_request(profile_id=f"lamp-test-{stamp}", mode="imported", text=LAMP_CONTEXT, options={},
                                      prompt="", policy_version=0, suggestions=g) for g in groups[-150:]]
    acc: dict[str, list[float]] = {v: [] for v in variants}
    gain: dict[str, list[float]] = {v: [] for v in variants}
    print(f"# {a.budget} ratings of LAMP-R paragraphs in requests of {k}; measured on {len(test_reqs)} other requests\n")
    print("| rater | variant | true acc (mean over seeds) | pick gain | oracle gain |\n|---|---|---|---|---|")
    for rater_name in a.raters.split(","):
        per = {v: [] for v in variants}
        for seed in (int(x) for x in a.seeds.split(",")):
            rng, rater = random.Random(seed), make_rater(rater_name, seed=seed)
            profile = f"{rater_name}-lamp-s{seed}-{stamp}"
            pool = groups[:-150]
            for g in rng.sample(pool, n_log):
                req = store.record_request(profile_id=profile, mode="imported", text=LAMP_CONTEXT, options={},
                                           prompt="", policy_version=0, suggestions=g)
                rate_suggestions(rater, {"mode": "imported", "text": LAMP_CONTEXT, "keywords": []},
                                 [s.id for s in req.suggestions], g, 10_000, store.add_feedback)
            log = store.requests_with_feedback(profile)
            judge = make_rater(rater_name, seed=0)
            for v in variants:
                cfg = dataclasses.replace(base, seed=seed, **VARIANTS[v])
                model, _ = train_reward_model(build_training_data(log, cfg.tie_pick_weight), cfg, embedder,
                                              store, eval=RewardData())
                per[v].append(measure(model, judge, test_reqs))
        for v in variants:
            m = {key: float(np.nanmean([c[key] for c in per[v]])) for key in ("true_acc", "pick", "oracle")}
            acc[v].append(m["true_acc"])
            gain[v].append(m["pick"])
            print(f"| {rater_name} | {v} | {m['true_acc']:.3f} | {m['pick']:+.3f} | {m['oracle']:+.3f} |", flush=True)
    print("\n| variant | mean true acc over raters | mean pick gain |\n|---|---|---|")
    for v in variants:
        print(f"| {v} | {np.nanmean(acc[v]):.3f} | {np.nanmean(gain[v]):+.4f} |")
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default=None, help="benchmarks/learning.py --out directory (or, with --from-base, "
                    "where the logs are written)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--from-base", default=None, help="a learning.py base-s*.json of held-out samples")
    ap.add_argument("--skip-prompts", type=int, default=25, help="with --from-base: use held-out prompts from this index")
    ap.add_argument("--raters", default="concise,vivid,upbeat,keywords,dialogue,firstperson,alliteration")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--from-lamp", default=None, help="reward_real_data.py's cache store (LAMP paragraphs embedded)")
    ap.add_argument("--budget", type=int, default=150, help="with --from-lamp: ratings per log")
    a = ap.parse_args()
    if a.from_lamp:
        return lamp_main(a)
    if a.from_base:
        a.cells = logs_from_base(a)

    import dataclasses

    import torch

    from assistant.lm.config import ModelSettings
    from assistant.lm.models import load_embedder
    from reward.eval.raters import make_rater
    from reward.feedback import build_training_data
    from reward.loop.config import LearnerConfig
    from reward.train import grouped_folds, train_reward_model
    from storage.store import Store

    torch.set_num_threads(a.threads)
    embedder = load_embedder(ModelSettings(device="cpu"))
    variants = [v for v in a.variants.split(",") if v]
    base = dataclasses.replace(LearnerConfig().rm, ensemble=1)
    print("| log (rater-run-seed) | variant | true acc (mean over folds) | pick gain | oracle gain | pairs |")
    print("|---|---|---|---|---|---|")
    totals: dict[str, list[float]] = {v: [] for v in variants}
    for db in sorted(Path(a.cells).glob("*/inkloop.db")):
        name = db.parent.name
        rater = make_rater(name.split("-")[0], seed=0)
        store = Store(db)
        groups = store.requests_with_feedback("bench")
        reqs = {f"request:{g['request'].id}": g["request"] for g in groups}
        for g in groups:
            g["request"].suggestions = g["suggestions"]
        # the folds (groups held out) are the same for every variant, whatever pairs it keeps
        folds = [(tr.groups(), he.groups()) for tr, he in grouped_folds(build_training_data(groups), a.folds, seed=0)]
        for v in variants:
            cells = []
            data = build_training_data(groups, dataclasses.replace(base, **VARIANTS[v]).tie_pick_weight)
            for fold, (train, held) in enumerate((data.select(tr), data.select(he)) for tr, he in folds):
                cfg = dataclasses.replace(base, seed=fold, **VARIANTS[v])
                model, _ = train_reward_model(train, cfg, embedder, store, eval=held)
                cells.append(measure(model, rater, [reqs[gid] for gid in held.groups()]))
            acc = float(np.mean([c["true_acc"] for c in cells]))
            totals[v].append(acc)
            print(f"| {name} | {v} | {acc:.3f} | {np.mean([c['pick'] for c in cells]):+.3f} | "
                  f"{np.mean([c['oracle'] for c in cells]):+.3f} | {sum(c['pairs'] for c in cells)} |", flush=True)
        store.close()
    print("\n| variant | mean true acc over logs |\n|---|---|")
    for v in variants:
        print(f"| {v} | {np.mean(totals[v]):.3f} |")


if __name__ == "__main__":
    main()
