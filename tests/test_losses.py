"""Hand-computed checks of the pure RL tensor functions (reward/losses.py)."""

import math

import pytest
import torch

from reward import losses as L


def t(*rows):
    data = rows[0] if len(rows) == 1 and isinstance(rows[0], list) else list(rows)
    return torch.tensor(data, dtype=torch.float32)


M = t([1, 1, 1, 0])  # three real tokens, one pad


def test_masked_mean_and_var():
    x = t([1.0, 2.0, 3.0, 100.0])
    assert L.masked_mean(x, M).item() == pytest.approx(2.0)
    # deviations -1, 0, 1 -> sum of squares 2; biased 2/3, unbiased 2/2
    assert L.masked_var(x, M, unbiased=False).item() == pytest.approx(2 / 3)
    assert L.masked_var(x, M).item() == pytest.approx(1.0)
    # along a dim, and the all-zero mask gives 0, not NaN
    x2 = t([1.0, 3.0], [5.0, 7.0])
    m2 = t([1, 1], [0, 0])
    assert L.masked_mean(x2, m2, dim=1).tolist() == [2.0, 0.0]


def test_masked_whiten():
    x = t([1.0, 2.0, 3.0, 100.0])
    w = L.masked_whiten(x, M)  # mean 2, unbiased std 1
    assert w.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    w2 = L.masked_whiten(x, M, shift_mean=False)
    assert w2.tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_kl_estimators():
    logp = torch.log(t([0.5, 0.25, 0.5]))
    ref = torch.log(t([0.5, 0.5, 0.25]))
    assert L.kl_k1(logp, ref).tolist() == pytest.approx([0.0, -math.log(2), math.log(2)])
    # r = ref/p = 1, 2, 0.5 -> (r-1) - log r = 0, 1 - log 2, -0.5 + log 2
    assert L.kl_k3(logp, ref).tolist() == pytest.approx([0.0, 1 - math.log(2), -0.5 + math.log(2)], abs=1e-6)
    assert (L.kl_k3(logp, ref) >= 0).all()


def test_shape_rewards_puts_score_on_last_real_token():
    kl = t([0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.0, 0.0])
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    r = L.shape_rewards(t(2.0, -1.0), kl, mask, beta=0.5)
    assert r[0].tolist() == pytest.approx([-0.05, -0.1, -0.15 + 2.0, 0.0])
    assert r[1].tolist() == pytest.approx([-0.25, -0.25 - 1.0, 0.0, 0.0])


def test_discounted_returns():
    r = t([1.0, 0.0, 2.0, 5.0])
    # G2 = 2, G1 = 0 + 0.5*2 = 1, G0 = 1 + 0.5*1 = 1.5; pad -> 0 (its 5 is ignored)
    assert L.discounted_returns(r[None], M[None], 0.5)[0].tolist() == pytest.approx([1.5, 1.0, 2.0, 0.0])


def test_td0_targets():
    r = t([1.0, 0.0, 2.0, 0.0])[None]
    v = t([0.5, 1.0, 3.0, 9.0])[None]
    # r_t + 0.5 * V_{t+1}; after the last real token V = 0
    assert L.td0_targets(r, v, M[None], 0.5)[0].tolist() == pytest.approx([1.5, 1.5, 2.0, 0.0])


def test_gae_by_hand():
    r = t([1.0, 0.0, 2.0, 0.0])[None]
    v = t([0.5, 1.0, 3.0, 9.0])[None]
    # deltas: 1 + .5*1 - .5 = 1.0; 0 + .5*3 - 1 = 0.5; 2 + 0 - 3 = -1.0
    # gamma*lam = 0.25: A2 = -1, A1 = .5 - .25 = .25, A0 = 1 + .25*.25 = 1.0625
    adv, ret = L.gae(r, v, M[None], gamma=0.5, lam=0.5)
    assert adv[0].tolist() == pytest.approx([1.0625, 0.25, -1.0, 0.0])
    assert ret[0].tolist() == pytest.approx([1.5625, 1.25, 2.0, 0.0])


def test_gae_limits_match_mc_and_td0():
    r = t([1.0, 0.0, 2.0, 0.0])[None]
    v = t([0.5, 1.0, 3.0, 9.0])[None]
    adv1, _ = L.gae(r, v, M[None], gamma=0.9, lam=1.0)
    mc = L.discounted_returns(r, M[None], 0.9)
    assert adv1[0].tolist() == pytest.approx((mc - v * M)[0].tolist())
    adv0, _ = L.gae(r, v, M[None], gamma=0.9, lam=0.0)
    assert adv0[0].tolist() == pytest.approx((L.td0_targets(r, v, M[None], 0.9) - v * M)[0].tolist())


def test_leave_one_out_baseline():
    s = t(1.0, 2.0, 6.0, 10.0)
    # k=2: groups (1,2), (6,10) -> baselines 2, 1, 10, 6
    assert L.leave_one_out_baseline(s, 2).tolist() == [2.0, 1.0, 10.0, 6.0]
    # k=4: (19 - s) / 3
    assert L.leave_one_out_baseline(s, 4).tolist() == pytest.approx([6.0, 17 / 3, 13 / 3, 3.0])
    with pytest.raises(ValueError):
        L.leave_one_out_baseline(s, 3)


def test_reinforce_loss_and_gradient():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    adv = t([2.0, -1.0, 1.0, 7.0])
    loss = L.reinforce_loss(logp, adv, M)
    # -(-2 + 2 - 0.5)/3 = 0.5/3
    assert loss.item() == pytest.approx(0.5 / 3)
    loss.backward()
    assert logp.grad.tolist() == pytest.approx([-2 / 3, 1 / 3, -1 / 3, 0.0])


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4)
    logp = torch.log(t([1.5, 0.5, 1.1, 1.0]))
    adv = t([1.0, -1.0, 1.0, 1.0])
    mask = t([1, 1, 1, 0])
    loss, st = L.clipped_surrogate_loss(logp, old, adv, mask, clip=0.2)
    # token0: r=1.5, A=1: min(1.5, 1.2) = 1.2 (clipped); token1: r=.5, A=-1: min(-.5, -.8) = -.8 (clipped)
    # token2: r=1.1: 1.1 (not clipped) -> loss = -(1.2 - .8 + 1.1)/3 = -0.5
    assert loss.item() == pytest.approx(-0.5)
    assert st["clipfrac"].item() == pytest.approx(2 / 3)
    assert st["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.1) / 3)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)]
    assert st["approx_kl"].item() == pytest.approx(sum(k3) / 3, rel=1e-5)


def test_clipped_value_loss_by_hand():
    v = t([2.0, 0.0, 1.0])
    old = t([1.0, 1.0, 1.0])
    ret = t([3.0, 0.0, 0.0])
    m = t([1, 1, 1])
    # clip 0.5: v_clip = 1.5, 0.5, 1.0; errs (1, 0, 1) vs (2.25, .25, 1) -> max (2.25, .25, 1)
    loss, frac = L.clipped_value_loss(v, old, ret, m, clip=0.5)
    assert loss.item() == pytest.approx(0.5 * 3.5 / 3)
    assert frac.item() == pytest.approx(2 / 3)
    plain, _ = L.clipped_value_loss(v, old, ret, m, clip=None)
    assert plain.item() == pytest.approx(0.5 * 2 / 3)


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1e4, -1e4, -1e4]])
    assert L.entropy_from_logits(logits).tolist() == pytest.approx([math.log(4), 0.0], abs=1e-5)


def test_explained_variance():
    tgt = t([1.0, 2.0, 3.0, 50.0])
    assert L.explained_variance(tgt, tgt, M).item() == pytest.approx(1.0)
    assert L.explained_variance(torch.full((4,), 2.0), tgt, M).item() == pytest.approx(0.0, abs=1e-6)


def test_adaptive_kl_beta():
    assert L.adaptive_kl_beta(0.1, kl=2.0, target=1.0, horizon=10, n_steps=1) == pytest.approx(0.1 * 1.02)
    assert L.adaptive_kl_beta(0.1, kl=0.9, target=1.0, horizon=10, n_steps=1) == pytest.approx(0.1 * 0.99)


def test_best_of_n_by_hand():
    s = t(1.0, 3.0, 2.0, 2.0, 5.0, 5.0, 5.0, 5.0)
    # group 1 (1, 3, 2, 2): best is index 1; group 2 all tie: the lower index, 4
    assert L.best_of_n(s, 4).tolist() == [False, True, False, False, True, False, False, False]
    # top 2: index 1, then 2 (tied with 3 at score 2: the lower index)
    assert L.best_of_n(s, 4, top=2).nonzero().flatten().tolist() == [1, 2, 4, 5]
    # margin 0: above the group mean (2 and 5) -> only index 1; a group of ties gives nothing
    assert L.best_of_n(s, 4, top=2, margin=0.0).nonzero().flatten().tolist() == [1]
    # margin 1.5: 3 is not above 2 + 1.5
    assert not L.best_of_n(s, 4, margin=1.5).any()
    with pytest.raises(ValueError):
        L.best_of_n(s, 3)
    with pytest.raises(ValueError):
        L.best_of_n(s, 4, top=5)


def test_distill_loss_and_gradient_by_hand():
    logp = torch.log(t([0.5, 0.25, 0.5, 0.9])).requires_grad_()
    ref = torch.log(t([0.5, 0.5, 0.25, 0.1]))
    # NLL over the 3 real tokens: (log 2 + log 4 + log 2) / 3 = 4 log 2 / 3
    # k3 with r = ref / pi = 1, 2, 0.5: 0, 1 - log 2, log 2 - 0.5 -> sum 0.5, mean 1/6
    loss, st = L.distill_loss(logp, ref, M, kl_coef=2.0)
    assert st["nll"].item() == pytest.approx(4 * math.log(2) / 3)
    assert st["kl"].item() == pytest.approx(1 / 6)
    assert loss.item() == pytest.approx(4 * math.log(2) / 3 + 2 / 6)
    loss.backward()
    # d/dlogp: -1/3 (NLL) + 2/3 * (1 - r) (k3): token 0: -1/3; token 1: -1/3 - 2/3; token 2: -1/3 + 1/3
    assert logp.grad.tolist() == pytest.approx([-1 / 3, -1.0, 0.0, 0.0], abs=1e-6)
    # no KL weight: plain supervised NLL
    plain, _ = L.distill_loss(logp.detach(), ref, M, kl_coef=0.0)
    assert plain.item() == pytest.approx(4 * math.log(2) / 3)


def test_dpo_loss_and_gradient_by_hand():
    # pair 0: implicit margin (-1 - -2) - (-3 - -3) = 1; pair 1: (-2 - -1) - (-1 - -1) = -1
    pc = t([-1.0, -2.0]).requires_grad_()
    pr = t([-3.0, -1.0]).requires_grad_()
    rc, rr = t([-2.0, -1.0]), t([-3.0, -1.0])
    loss, st = L.dpo_loss(pc, pr, rc, rr, beta=0.5)
    # -log sigmoid(0.5) and -log sigmoid(-0.5), averaged
    expect = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expect)
    assert st["accuracy"].item() == pytest.approx(0.5)
    assert st["margin"].item() == pytest.approx(0.0)
    loss.backward()
    # d/d pi_c = -beta * sigmoid(-beta m) / n: pair 0: -0.5 * sigmoid(-0.5) / 2; pair 1: -0.5 * sigmoid(0.5) / 2
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert pc.grad.tolist() == pytest.approx([-0.25 * sig(-0.5), -0.25 * sig(0.5)])
    assert pr.grad.tolist() == pytest.approx([0.25 * sig(-0.5), 0.25 * sig(0.5)])
    # a weight of 0 drops a pair: only pair 0 counts
    w, _ = L.dpo_loss(pc.detach(), pr.detach(), rc, rr, beta=0.5, weight=t([1.0, 0.0]))
    assert w.item() == pytest.approx(math.log1p(math.exp(-0.5)))
