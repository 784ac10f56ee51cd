"""D3PO and SPO: the per-step clipped log-ratio loss and temporal discounting against float64 closed forms; pair
collection (shared prefixes, step-aware winners); the human label file; the reference stays frozen."""
import math

import pytest
import torch

from diffalign.algorithms import ALGORITHMS, D3PO, SPO, D3POConfig, SPOConfig
from diffalign.algorithms.base import DataPath
from diffalign.algorithms.direct_reward import predicted_x0
from diffalign.algorithms.step_preference import (StepPairBatch, clipped_log_ratio, collect_d3po, collect_spo,
                                                  discount_weights, load_labels, pairs_from_preference,
                                                  step_preference_loss)
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.toy import ToyAdapter

T = 6
PROMPTS = ["a", "b", "c", "a"]


def make_policy(reduction="mean"):
    adapter = ToyAdapter(["a", "b", "c"], dim=5, hidden=16, dtype=torch.float64)
    return DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, T, eta=1.0), guidance_scale=1.5,
                           logprob_reduction=reduction)


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


def x_T(policy, n=4, seed=0):
    return torch.cat([policy.adapter.initial_noise({"prompt_id": torch.zeros(1, dtype=torch.long)}, g)
                      for g in gens(n, seed + 7)])


def logp64(policy, x_t, x_prev, steps, cond, reference=False):
    """Independent float64 Gaussian log-density of x_prev under the policy's (or the frozen base's) step."""
    pol = policy.reference() if reference else policy
    out = pol.transition(x_t, steps, cond, prev_sample=x_prev)
    mean, std = out.mean.double(), out.std.double().reshape(-1, 1)
    lp = -((x_prev.double() - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean(1) if policy.logprob_reduction == "mean" else lp.sum(1)


# ---- pure pieces ---------------------------------------------------------------------------------------------
def test_clipped_log_ratio_and_loss_against_float64():
    logp = torch.tensor([-1.0, -1.2, -0.9, -1.05], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    l = clipped_log_ratio(logp, ref, 0.1)
    expected = torch.log(torch.clamp(torch.exp(logp.detach() - ref), 0.9, 1.1))
    assert torch.allclose(l, expected, atol=1e-15)
    (g,) = torch.autograd.grad(l.sum(), logp)
    assert g.tolist() == [1.0, 0.0, 0.0, 1.0]  # clipped entries pass no gradient
    assert torch.equal(clipped_log_ratio(logp, ref, None), logp - ref)
    l_w, l_l = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.1, 0.4], dtype=torch.float64)
    w = torch.tensor([1.0, 0.5], dtype=torch.float64)
    out = step_preference_loss(l_w, l_l, 2.0, w)
    closed = [-1.0 * math.log(1 / (1 + math.exp(-2.0 * 0.2))), -0.5 * math.log(1 / (1 + math.exp(-2.0 * -0.6)))]
    assert torch.allclose(out, torch.tensor(closed, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(discount_weights(torch.tensor([0, 1, 4]), 0.9).double(),
                          torch.tensor([1.0, 0.9, 0.9 ** 4], dtype=torch.float64), atol=1e-7)


@pytest.mark.parametrize("reduction,clip", [("mean", None), ("sum", None), ("mean", 0.01)])
def test_step_pair_loss_matches_float64_with_discounting(reduction, clip):
    policy = make_policy(reduction)
    cond = policy.adapter.encode_conditions(PROMPTS)
    a, b, steps = collect_d3po(policy, cond, x_T(policy), gens(4), branch_step=1)
    with torch.no_grad():  # move the policy off the base so log-ratios (and clips) are non-trivial
        for p in policy.adapter.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    pairs = pairs_from_preference(a, b, steps, torch.tensor([True, False, True, False]),
                                  torch.tensor([True, True, False, True]))
    cols = torch.tensor([0, 2, 4, 1])
    rows = torch.arange(4)
    batch = StepPairBatch(pairs.x_t_w[rows, cols], pairs.x_prev_w[rows, cols], pairs.x_t_l[rows, cols],
                          pairs.x_prev_l[rows, cols], pairs.steps[cols], cond, pairs.valid[rows, cols])
    cfg = D3POConfig(beta=3.0, gamma=0.8, clip_range=clip) if clip else SPOConfig(beta=3.0, gamma=0.8)
    algo = D3PO(cfg) if clip else SPO(cfg)
    loss, metrics = algo.loss(batch, policy, policy.reference())

    def ratio(x_t, x_prev):
        l = logp64(policy, x_t, x_prev, batch.steps, cond) - logp64(policy, x_t, x_prev, batch.steps, cond, True)
        return l if clip is None else torch.log(torch.clamp(torch.exp(l), 1 - clip, 1 + clip))
    l_w, l_l = ratio(batch.x_t_w, batch.x_prev_w), ratio(batch.x_t_l, batch.x_prev_l)
    w = batch.valid.double() * 0.8 ** batch.steps.double()
    expected = (-w * torch.log(torch.sigmoid(3.0 * (l_w - l_l)))).mean()
    # the fused step op returns float32 log-probs (docs/design.md, section 5: accumulate in fp32), hence the tolerances
    assert abs(float(loss.detach()) - float(expected.detach())) < 1e-6
    params = policy.adapter.trainable_parameters()
    for u, v in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        assert torch.allclose(u, v, rtol=1e-4, atol=1e-7)
    if clip:
        assert 0 < float(metrics["clip_fraction"]) < 1, float(metrics["clip_fraction"])  # some clipped, some not


# ---- collection --------------------------------------------------------------------------------------------------
def test_d3po_trajectories_share_their_prefix_and_do_not_depend_on_the_batch_split():
    policy = make_policy()
    cond = policy.adapter.encode_conditions(PROMPTS)
    a, b, steps = collect_d3po(policy, cond, x_T(policy), gens(4), branch_step=2)
    assert steps.tolist() == list(range(2, T)) and a.shape == (4, T - 2 + 1, 5)
    assert torch.equal(a[:, 0], b[:, 0]) and not torch.allclose(a[:, 1], b[:, 1])
    # trajectory a, the shared prefix included, is the policy's own sampler with the same per-sample noise
    left = collect_d3po(policy, {k: v[:2] for k, v in cond.items()}, x_T(policy)[:2], gens(4)[:2], 2)
    assert torch.allclose(left[0], a[:2], atol=1e-12) and torch.allclose(left[1], b[:2], atol=1e-12)
    pairs = pairs_from_preference(a, b, steps, torch.tensor([True, False, True, True]), torch.ones(4, dtype=torch.bool))
    assert torch.equal(pairs.x_t_w[1], b[1, :-1]) and torch.equal(pairs.x_prev_l[1], a[1, 1:])
    assert torch.equal(pairs.x0, torch.stack([a[0, -1], b[1, -1], a[2, -1], a[3, -1]]))


def test_spo_winner_and_loser_are_the_best_and_worst_children_of_one_state():
    policy = make_policy()
    cond = policy.adapter.encode_conditions(PROMPTS)
    target = torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    calls = []

    def score(x0, cond_k):
        calls.append(x0.shape[0])
        return -((x0 - target) ** 2).sum(1)
    pairs = collect_spo(policy, cond, x_T(policy), gens(4), 3, score)
    assert calls == [12] * T and pairs.steps.tolist() == list(range(T))
    assert torch.equal(pairs.x_t_w, pairs.x_t_l) and bool((pairs.valid == 1).all())
    for i in (0, 3):  # the step-aware scorer: the reward of each child's one-step prediction x0_hat
        x_t, w, l = pairs.x_t_w[:, i], pairs.x_prev_w[:, i], pairs.x_prev_l[:, i]
        step = lambda x: predicted_x0(policy.rule, i + 1, policy.predict(x, i + 1, cond), x)  # noqa: E731
        assert bool((score(step(w), cond) >= score(step(l), cond)).all())
        # both are draws of the policy's step from x_t: their log-probs are finite and the mean is shared
        out_w = policy.transition(x_t, i, cond, prev_sample=w)
        out_l = policy.transition(x_t, i, cond, prev_sample=l)
        assert torch.equal(out_w.mean, out_l.mean)
    # the chain continues from one of the children: the next state is a child of the previous one
    nxt = pairs.x_t_w[:, 1]
    lp = policy.transition(pairs.x_t_w[:, 0], 0, cond, prev_sample=nxt).log_prob
    assert torch.isfinite(lp).all()


# ---- the label file -----------------------------------------------------------------------------------------------
def test_label_file_reads_winners_and_names_file_and_line_on_errors(tmp_path):
    good = tmp_path / "labels.jsonl"
    good.write_text('{"epoch": 0, "pair": 1, "winner": 1}\n\n{"epoch": 0, "pair": 0, "winner": null}\n'
                    '{"epoch": 2, "pair": 5, "winner": 0}\n')
    assert load_labels(str(good)) == {(0, 1): 1, (0, 0): None, (2, 5): 0}
    cases = [('{"epoch": 0, "pair": 1, "winner": 1}\n{"epoch": 0, "pair": 1', "line 2: not valid JSON"),
             ('[1, 2]', "line 1: expected an object"),
             ('{"epoch": 0, "winner": 1}', "line 1: missing key\\(s\\) \\['pair'\\]"),
             ('{"epoch": -1, "pair": 0, "winner": 1}', "line 1: 'epoch' must be an integer >= 0"),
             ('{"epoch": 0, "pair": 0, "winner": 2}', "line 1: 'winner' must be 0, 1 or null"),
             ('{"epoch": 0, "pair": 0, "winner": true}', "line 1: 'winner' must be 0, 1 or null"),
             ('{"epoch": 0, "pair": 0, "winner": 1}\n{"epoch": 0, "pair": 0, "winner": 0}', "line 2: epoch 0, pair 0 is labelled twice")]
    for i, (text, message) in enumerate(cases):
        bad = tmp_path / f"bad{i}.jsonl"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message) as exc:
            load_labels(str(bad))
        assert str(bad) in str(exc.value)
    with pytest.raises(ValueError, match="does not exist"):
        load_labels(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="needs algorithm.label_file"):
        D3POConfig(preference="labels")
    with pytest.raises(ValueError, match="line 1"):
        D3POConfig(preference="labels", label_file=str(tmp_path / "bad1.jsonl"))
    with pytest.raises(ValueError, match="set preference: labels"):
        D3POConfig(label_file=str(good))


def test_registry_and_config_checks():
    assert ALGORITHMS["d3po"] is D3PO and ALGORITHMS["spo"] is SPO
    assert D3PO.data_path == SPO.data_path == DataPath.STEP_PAIRS and D3PO().needs_reference
    for kwargs, key in (({"gamma": 0.0}, "algorithm.gamma"), ({"beta": 0}, "algorithm.beta"),
                        ({"clip_range": 1.5}, "algorithm.clip_range"), ({"branch_step": -1}, "algorithm.branch_step"),
                        ({"preference": "votes"}, "algorithm.preference")):
        with pytest.raises(ValueError, match=key):
            D3POConfig(**kwargs)
    with pytest.raises(ValueError, match="algorithm.num_children"):
        SPOConfig(num_children=1)


def test_the_reference_stays_frozen_while_the_policy_learns():
    from diffalign.modalities.image import ImageAdapter, ImageOptions
    adapter = ImageAdapter.from_options(ImageOptions(resolution=16, lora_rank=4, prediction_type="v_prediction"))
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 3), guidance_scale=2.0)
    cond = adapter.encode_conditions(["a cat", "a dog"])
    xT = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    a, b, steps = collect_d3po(policy, cond, xT, gens(2), branch_step=0)
    pairs = pairs_from_preference(a, b, steps, torch.tensor([True, False]), torch.ones(2, dtype=torch.bool))
    batch = StepPairBatch(pairs.x_t_w[:, 1], pairs.x_prev_w[:, 1], pairs.x_t_l[:, 1], pairs.x_prev_l[:, 1],
                          torch.tensor([1, 1]), cond, pairs.valid[:, 1])
    reference = policy.reference()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    c1 = {k: v[:1] for k, v in cond.items()}
    with torch.no_grad(), adapter.reference_mode():
        before = adapter.denoise(x, t, c1)
    opt = torch.optim.SGD(adapter.trainable_parameters(), lr=1.0)
    for _ in range(2):
        loss, _ = D3PO(D3POConfig(clip_range=None, beta=100.0)).loss(batch, policy, reference)
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        moved = adapter.denoise(x, t, c1)
        with adapter.reference_mode():
            after = adapter.denoise(x, t, c1)
    assert torch.equal(before, after) and (moved - before).abs().max() > 1e-6
    assert not any(p.requires_grad for n, p in adapter.denoiser.named_parameters() if "lora" not in n)
