"""Offline preference losses against float64 formulas written here from the papers / docs/design.md ("Formulas")."""
import math

import pytest
import torch

from diffalign.algorithms import DPO, E2PO, IPO, KTO, ORPO, DPOConfig, E2POConfig, IPOConfig, KTOConfig, ORPOConfig, \
    SimPO, SimPOConfig
from diffalign.algorithms.reference_free import bounded_score

P, SHAPE = 5, (3, 4, 4)


def preds(seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn((2 * P,) + SHAPE, generator=g, dtype=torch.float64)
    ref = target + 0.5 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    model = (ref + scale * torch.randn(target.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    return model, ref, target


def err(pred, target):  # per-sample mean squared error, written out
    return ((pred - target) ** 2).reshape(pred.shape[0], -1).sum(1) / math.prod(pred.shape[1:])


def logsig(x):
    return -torch.log1p(torch.exp(-x))


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_family(loss_type):
    model, ref, target = preds()
    beta = 300.0
    cls, cfg = (IPO, IPOConfig(beta=beta)) if loss_type == "ipo" else (DPO, DPOConfig(beta=beta, loss_type=loss_type))
    loss, m = cls(cfg).pair_loss(model, ref, target, None)
    em, er = err(model, target), err(ref, target)
    inside = -(beta / 2) * ((em[:P] - em[P:]) - (er[:P] - er[P:]))
    if loss_type == "sigmoid":
        want = -logsig(inside).mean()
    elif loss_type == "hinge":
        want = torch.clamp(1 - inside, min=0).mean()
    else:  # IPO (Eq. 11) with the diffusion log-ratio h = inside / beta and tau = beta
        want = ((inside / beta - 1 / (2 * beta)) ** 2).mean()
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grad_of(loss, model), grad_of(want, model), rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(m["implicit_acc"], (inside > 0).double().mean())
    torch.testing.assert_close(m["reward_margin"], inside.mean().detach())
    assert 0 < float(m["implicit_acc"]) < 1  # the fixture has pairs on both sides


def test_e2po_soft_labels():
    model, ref, target = preds(1)
    rw, rl = torch.tensor([1.0, 0.2, 3.0, 0.0, 0.5], dtype=torch.float64), torch.zeros(P, dtype=torch.float64)
    from diffalign.algorithms.preference import OfflineBatch
    batch = OfflineBatch(model, torch.zeros(2 * P), target, {}, rewards=torch.cat([rw, rl]))
    beta, beta_r = 200.0, 2.0
    loss, m = E2PO(E2POConfig(beta=beta, beta_r=beta_r)).pair_loss(model, ref, target, batch)
    em, er = err(model, target), err(ref, target)
    delta = (em[:P] - er[:P]) - (em[P:] - er[P:])
    p = 1 / (1 + torch.exp(-beta_r * (rw - rl)))
    want = (-p * logsig(-beta * delta) - (1 - p) * logsig(beta * delta)).mean()
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grad_of(loss, model), grad_of(want, model), rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(m["implicit_acc"], (delta < 0).double().mean())
    # a hard label (huge reward gap) is Diffusion-DPO with beta' = 2 beta
    hard = OfflineBatch(model, torch.zeros(2 * P), target, {}, rewards=torch.cat([rw + 1e3, rl]))
    l_hard, _ = E2PO(E2POConfig(beta=beta, beta_r=1.0)).pair_loss(model, ref, target, hard)
    l_dpo, _ = DPO(DPOConfig(beta=2 * beta)).pair_loss(model, ref, target, None)
    torch.testing.assert_close(l_hard, l_dpo, rtol=1e-9, atol=1e-12)


def mapo_score(e, w):
    """MaPO's score g(w e) = w e / (exp(w e) - 1), written out as the paper's formula."""
    return (w * e) / (torch.exp(w * e) - 1)


@pytest.mark.parametrize("snr", [0.5, 20.0])
def test_simpo_bounded_margin(snr):
    model, ref, target = preds(2)
    beta, gamma, sft = 800.0, 0.3, 0.7
    cfg = SimPOConfig(beta=beta, gamma=gamma, snr_value=snr, sft_weight=sft)
    loss, m = SimPO(cfg).pair_loss(model, None, target, None)
    e = err(model, target)
    margin = beta * (mapo_score(e[:P], snr) - mapo_score(e[P:], snr))
    want = -logsig(margin - gamma).mean() + sft * e[:P].mean()
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grad_of(loss, model), grad_of(want, model), rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(m["reward_margin"], margin.mean().detach())
    torch.testing.assert_close(m["implicit_acc"], (e[:P] < e[P:]).double().mean())
    assert 0 < float(m["implicit_acc"]) < 1  # the fixture has pairs on both sides
    assert not SimPO().needs_reference and not ORPO().needs_reference


def test_simpo_small_snr_limit_is_the_linear_reward():
    """For w e << 1, g(w e) = 1 - w e / 2 + O((w e)^2): beta (g_w - g_l) -> (beta w / 2) (e_l - e_w), the first
    adaptation's SimPO reward -beta' e with beta' = beta w / 2."""
    model, ref, target = preds(5)
    w, beta = 1e-4, 1e6
    loss, _ = SimPO(SimPOConfig(beta=beta, gamma=0.2, snr_value=w, sft_weight=0.0)).pair_loss(model, None, target, None)
    e = err(model, target).detach()
    linear = -logsig(beta * w / 2 * (e[P:] - e[:P]) - 0.2).mean()
    torch.testing.assert_close(loss.detach(), linear, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("snr", [0.5, 4.0])
def test_orpo_is_mapo(snr):
    model, ref, target = preds(3)
    T, lam, sft = 1000.0, 0.1, 1.0
    cfg = ORPOConfig(snr_value=snr, margin_scale=T, lam=lam, sft_weight=sft)
    loss, m = ORPO(cfg).pair_loss(model, None, target, None)
    e = err(model, target)
    # MaPO (Hong, Paul et al. 2024): L = e_w - beta_mapo log sigmoid(T (g(w e_w) - g(w e_l)))
    margin = T * (mapo_score(e[:P], snr) - mapo_score(e[P:], snr))
    want = sft * e[:P].mean() - lam * logsig(margin).mean()
    torch.testing.assert_close(loss, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_of(loss, model), grad_of(want, model), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(m["implicit_acc"], (margin > 0).double().mean())
    torch.testing.assert_close(m["reward_margin"], margin.mean().detach())


def test_bounded_score_closed_form_and_bounds():
    e = torch.tensor([0.0, 1e-9, 1e-3, 0.06, 0.15, 1.0, 40.0, 2000.0], dtype=torch.float64, requires_grad=True)
    s = bounded_score(e, 0.5)
    x = 0.5 * e.detach()
    # the closed form where it is well conditioned; g(0) = 1; g(1000) = 1000 e^-1000 underflows to 0
    torch.testing.assert_close(s[2:7], (x / torch.expm1(x))[2:7], rtol=1e-12, atol=0)
    torch.testing.assert_close(s[:2], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-9)
    assert float(s[7].detach()) == 0.0
    assert bool((s[:7] > 0).all() and (s <= 1).all() and (s[2:] < s[1:-1]).all())
    # bounded gain: the gradient on a growing error vanishes; g'(0) = -1/2 (times w)
    (g,) = torch.autograd.grad(s.sum(), e)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g[1], torch.tensor(-0.25, dtype=torch.float64), rtol=1e-6, atol=0)
    assert abs(float(g[6])) < 1e-6 and float(g[7]) == 0.0
    # convexity: the same change of error is worth more on the better-denoised side
    assert float(g[3]) < float(g[4]) < 0


def test_reference_free_configs_reject_bad_values():
    with pytest.raises(ValueError, match="snr_value"):
        ORPOConfig(snr_value=0.0)
    with pytest.raises(ValueError, match="margin_scale"):
        ORPOConfig(margin_scale=-1.0)
    with pytest.raises(ValueError, match="sft_weight"):
        SimPOConfig(sft_weight=-0.5)
    with pytest.raises(ValueError, match="gamma"):
        SimPOConfig(gamma=-0.1)


def test_kto_with_all_reduced_reference_point():
    g = torch.Generator().manual_seed(4)
    B = 6
    target = torch.randn((2 * B, 8), generator=g, dtype=torch.float64)
    ref = target + 0.3 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    model = (ref + 0.1 * torch.randn(target.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    desirable = torch.tensor([True, False, True, True, False, False] * 2)
    beta, ld, lu = 40.0, 1.0, 1.5
    kto = KTO(KTOConfig(beta=beta, lambda_desirable=ld, lambda_undesirable=lu))
    # process A holds rows :B, process B rows B:; the all-reduce averages their batch means of g
    gval = err(ref, target) - err(model, target).detach()
    mean_b = gval[B:].mean()
    loss_a, m = kto.label_loss(model[:B], ref[:B], target[:B], desirable[:B], lambda t: (t + mean_b) / 2)
    z = torch.clamp(gval.mean(), min=0)  # z over the global batch
    s = torch.where(desirable[:B], 1.0, -1.0).double()
    lam = torch.where(desirable[:B], ld, lu).double()
    gm = err(ref[:B], target[:B]) - err(model[:B], target[:B])
    want = (lam * (1 - torch.sigmoid(s * beta * (gm - z)))).mean()
    torch.testing.assert_close(loss_a, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grad_of(loss_a, model), grad_of(want, model), rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(m["kl_ref"], z)
    right = torch.where(desirable[:B], gm > z, gm < z).double().mean()
    torch.testing.assert_close(m["implicit_acc"], right)
    d = desirable[:B]
    torch.testing.assert_close(m["reward_margin"], beta * (gm[d].mean() - gm[~d].mean()).detach())
    # a single process (identity reduce) gets z from its own batch only
    _, m1 = kto.label_loss(model[:B], ref[:B], target[:B], desirable[:B])
    torch.testing.assert_close(m1["kl_ref"], torch.clamp(gval[:B].mean(), min=0))


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="algorithm.beta"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="algorithm.loss_type"):
        DPOConfig(loss_type="square")
    with pytest.raises(ValueError, match="algorithm.loss_type of ipo"):
        IPOConfig(loss_type="sigmoid")
    with pytest.raises(ValueError, match="algorithm.gamma"):
        SimPOConfig(gamma=-1)
    with pytest.raises(ValueError, match="algorithm.lambda_undesirable"):
        KTOConfig(lambda_undesirable=0)
