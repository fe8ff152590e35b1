"""Quality metrics on hand-made texts (values worked out by hand in the comments) and the two
model-based metrics on the tiny random model."""

from __future__ import annotations

import math

import pytest
import torch

from assistant.lm.logprobs import kl_to_reference
from reward import text as T
from reward.eval import quality as q


def test_words_and_ngrams():
    assert T.words("The cat, the CAT! Don't.") == ["the", "cat", "the", "cat", "don't"]
    assert T.ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert T.ngrams(["a"], 2) == []
    with pytest.raises(ValueError):
        T.ngrams(["a"], 0)


def test_distinct_n():
    texts = ["the cat sat", "the dog sat"]
    # unigrams: the cat sat the dog sat = 6, unique {the, cat, sat, dog} = 4 -> 4/6
    assert T.distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) (the dog) (dog sat): 4 unique of 4 -> 1.0
    assert T.distinct_n(texts, 2) == pytest.approx(1.0)
    # the same text twice: 3 unique of 6 unigrams, 2 unique of 4 bigrams
    assert T.distinct_n(["the cat sat", "the cat sat"], 1) == pytest.approx(0.5)
    assert T.distinct_n(["the cat sat", "the cat sat"], 2) == pytest.approx(0.5)
    assert T.distinct_n(["one"], 2) == 0.0  # no bigram at all


def test_repetition_rate():
    # "the cat the cat the": bigrams (the cat)(cat the)(the cat)(cat the) -> 2 unique of 4 -> 1 - 2/4
    assert T.repetition_rate("the cat the cat the", 2) == pytest.approx(0.5)
    # unigrams: 5 tokens, 2 unique -> 1 - 2/5
    assert T.repetition_rate("the cat the cat the", 1) == pytest.approx(0.6)
    assert T.repetition_rate("all different words here", 2) == 0.0
    assert T.repetition_rate("", 2) == 0.0
    # mean over two texts: (0.5 + 0.0) / 2
    assert T.mean_repetition_rate(["the cat the cat the", "a b c"], 2) == pytest.approx(0.25)


def test_near_duplicate_families_by_hand():
    # 3-grams: "a b c d e f" -> abc bcd cde def; "a b c d e g" -> abc bcd cde deg: 3 shared of 5
    # distinct (0.6 >= 0.3, one family); "a b c" -> abc: 1 shared with the first of 4 (0.25 < 0.3)
    texts = ["a b c d e f", "a b c d e g", "x y z w v u", "a b c"]
    assert T.near_duplicate_families(texts, n=3, min_jaccard=0.3) == [0, 0, 1, 2]
    assert T.near_duplicate_families(texts, n=3, min_jaccard=0.25) == [0, 0, 1, 0]  # 0.25 links "a b c" too
    # a chain links texts that share nothing directly: p~q (3 of 5 3-grams), q~r (3 of 5); p and r share 2 of 6 (0.33 < 0.5)
    chain = ["p q r s t u", "q r s t u v", "r s t u v w"]
    assert T.near_duplicate_families(chain, n=3, min_jaccard=0.5) == [0, 0, 0]
    # an n-gram found in more texts than max_postings (a stock phrase) links nothing
    stock = ["once upon a time", "once upon a time"]
    assert T.near_duplicate_families(stock, n=2, min_jaccard=0.5) == [0, 0]
    assert T.near_duplicate_families(stock, n=2, min_jaccard=0.5, max_postings=1) == [0, 1]
    with pytest.raises(ValueError):
        T.near_duplicate_families(texts, n=0)


def test_mean_length(tiny_tokenizer):
    assert q.mean_length(["one two three", "four"]) == pytest.approx(2.0)  # (3 + 1) / 2
    assert q.mean_length([]) == 0.0
    n_tok = q.mean_length(["the rain"], tokenizer=tiny_tokenizer)
    assert n_tok == len(tiny_tokenizer("the rain", add_special_tokens=False)["input_ids"])


def test_bleu_hand_computed():
    # hyp "the cat sat" vs ref "the cat sat down", N=2:
    # p1 = 3/3, p2 = (2+1)/(2+1) = 1 (smoothed), BP = exp(1 - 4/3) -> exp(-1/3) = 0.71653
    assert q.bleu("the cat sat".split(), ["the cat sat down".split()], max_n=2) == pytest.approx(math.exp(-1 / 3))
    # hyp "a b c d" vs ref "a b x d", N=2: p1 = 3/4; bigrams ab bc cd vs ab bx xd -> 1 match of 3,
    # smoothed p2 = (1+1)/(3+1) = 1/2; BP = 1 -> sqrt(3/4 * 1/2) = 0.61237
    assert q.bleu("a b c d".split(), ["a b x d".split()], max_n=2) == pytest.approx(math.sqrt(0.375))
    # clipping: "the the the" vs "the cat", N=1: min(3, 1)/3 = 1/3; c=3 >= r=2 so BP = 1
    assert q.bleu("the the the".split(), ["the cat".split()], max_n=1) == pytest.approx(1 / 3)
    # closest reference length is used for BP: refs of length 2 and 5, hyp of length 4 -> r = 5,
    # all unigrams match (p1 = 1, N=1): BP = exp(1 - 5/4) = exp(-0.25)
    assert q.bleu("a b c d".split(), ["a b".split(), "a b c d e".split()], max_n=1) == pytest.approx(math.exp(-0.25))
    assert q.bleu("x y".split(), ["a b".split()]) == 0.0  # no shared word
    assert q.bleu([], ["a".split()]) == 0.0


def test_self_bleu():
    # both directions are the "a b c d" / "a b x d" case above -> mean 0.61237
    assert q.self_bleu(["a b c d", "a b x d"], max_n=2) == pytest.approx(math.sqrt(0.375))
    # identical candidates: every smoothed p_n = (m+1)/(l+1) with m = l -> 1, BP 1 -> 1.0
    assert q.self_bleu(["the rain fell on the town"] * 3) == pytest.approx(1.0)
    # no shared words -> 0
    assert q.self_bleu(["red green", "blue yellow", "black white"]) == 0.0
    assert q.self_bleu(["only one"]) == 0.0


def test_wilson_and_win_rate():
    # 8 of 10, z = 1.96: z^2/n = 0.38416, centre = (0.8 + 0.19208) / 1.38416 = 0.716738,
    # half = 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.226580 -> (0.49016, 0.94332)
    lo, hi = q.wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4)
    assert hi == pytest.approx(0.94332, abs=1e-4)
    # 0 of 5: centre = (0 + 0.38416) / (1 + 0.76832) = 0.21724 = half -> (0, 0.43449)
    lo, hi = q.wilson_interval(0, 5)
    assert lo == pytest.approx(0.0, abs=1e-9)
    assert hi == pytest.approx(0.43449, abs=1e-4)
    # ties count half: 3 wins, 1 loss, 2 ties -> (3 + 1) / 6
    r = q.win_rate(3, 1, 2)
    assert r["win_rate"] == pytest.approx(4 / 6) and r["n"] == 6
    # Wilson on 4 of 6: z^2/n = 0.640267, centre = (0.666667 + 0.320133) / 1.640267 = 0.601613,
    # half = 1.96 * sqrt(0.037037 + 0.026678) / 1.640267 = 0.301625 -> (0.29999, 0.90323)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(0.29999, abs=1e-4), pytest.approx(0.90323, abs=1e-4))
    assert q.win_rate(0, 0) == {"win_rate": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n": 0}
    with pytest.raises(ValueError):
        q.wilson_interval(11, 10)
    assert q.pairwise_outcomes([1.0, 0.2, 0.5], [0.5, 0.4, 0.5]) == (1, 1, 1)


def test_text_metrics_and_mean_terms():
    m = q.text_metrics([["the cat sat", "the dog sat"], ["a b c d", "a b x d"]])
    # pooled unigrams: 6 + 8 = 14, unique: the cat sat dog a b c d x = 9
    assert m["eval/distinct_1"] == pytest.approx(9 / 14)
    assert m["eval/candidates"] == 4
    assert m["eval/length_words"] == pytest.approx((3 + 3 + 4 + 4) / 4)
    assert q.mean_terms({"length": [1.0, 3.0]}) == {"eval/reward/length": 2.0}


def test_perplexity_stable_and_reference(tiny_lm):
    model, tok = tiny_lm
    text = "The rain had not stopped for three days."
    p1 = q.perplexity(model, tok, [text])
    p2 = q.perplexity(model, tok, [text])
    assert math.isfinite(p1) and p1 > 1.0
    assert p1 == p2
    # a random model over a ~384-token vocabulary is close to uniform
    assert p1 < 5 * len(tok)
    # conditioning on a context scores only the text's tokens and changes the value
    pc = q.perplexity(model, tok, [text], contexts=["Write a passage of prose."])
    assert math.isfinite(pc) and pc != p1


def _peft(model, seed=1):
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)  # move the policy away from the reference
    return pm


def test_kl_and_reference_perplexity(tiny_lm):
    model, tok = tiny_lm
    ctx, sample = ["Write a passage of prose."], ["She opened the door and the wind rushed in."]
    base_ppl = q.perplexity(model, tok, sample, ctx)
    assert kl_to_reference(model, tok, ctx, sample)["kl"] == pytest.approx(0.0, abs=1e-7)
    pm = _peft(model)
    kl = kl_to_reference(pm, tok, ctx, sample)
    assert kl["kl"] > 1e-4 and kl["tokens"] == len(tok(sample[0], add_special_tokens=False)["input_ids"])
    # perplexity under the reference = adapter disabled = the base model's perplexity
    assert q.perplexity(pm, tok, sample, ctx) == pytest.approx(base_ppl, rel=1e-5)
    assert q.perplexity(pm, tok, sample, ctx, use_reference=False) != pytest.approx(base_ppl, rel=1e-5)
