"""AlignDiff's attribute strength model: trained by the reward-model trainer on annotator labels it ranks
held-out segments well above chance per attribute; relabelling follows the true attribute; save / load
through load_reward; the reward with requested strengths; the matching metrics on known inputs."""
import math

import pytest
import torch

from diffalign.config import ConfigError
from diffalign.rewards.attribute_strength import (AttributeStrengthModel, build_attribute_strength_model, calibrate,
                                                  empirical_cdf, minmax_normalise, rank_normalise,
                                                  read_segment_comparisons, relabel, segment_comparisons)
from diffalign.rewards.behaviour import attribute_values
from diffalign.rewards.behaviour_annotator import synthetic_trajectories, write_synthetic_segment_labels
from diffalign.rewards.strength_metrics import attribute_mae, match_rate, matching_metrics, per_sample_error
from diffalign.rewards.training.data import rank_tensor
from diffalign.rewards.training.metrics import pairwise_accuracy

ASPECTS = ["speed", "torso_height"]
H = 16


def _config(tmp_path, **over):
    from diffalign.trainer.reward_model import load_reward_train_config
    data = {"output_dir": str(tmp_path / "run"), "seed": 0, "epochs": 8,
            "model": {"kind": "trajectory", "aspects": ASPECTS, "encoder": {"encoder": "transformer", "width": 16,
                                                                            "layers": 1, "heads": 2}},
            "data": {"path": "synthetic:trajectories",
                     "synthetic": {"num_segments": 160, "num_pairs": 600, "horizon": H, "temperature": 0.02}},
            "train": {"batch_size": 32, "learning_rate": 0.01},
            "logging": {"tensorboard": False, "progress_bar": False}}
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return load_reward_train_config(data=data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run (about 2 s on one thread, plus torch.optim's first import) and an independent
    held-out label set (other segments)."""
    torch.set_num_threads(1)
    from diffalign.trainer.reward_model import RewardTrainer
    tmp = tmp_path_factory.mktemp("strength")
    held = write_synthetic_segment_labels(tmp / "held", ASPECTS, num_segments=80, num_pairs=400, horizon=H,
                                          temperature=0.0, seed=99)
    trainer = RewardTrainer(_config(tmp, data={"eval_path": held}))
    summary = trainer.train()
    return trainer, summary, tmp, held


def _accuracy(model, path):
    groups, _ = read_segment_comparisons(path, ASPECTS)
    with torch.no_grad():
        scores = model.scores(torch.stack([s for g in groups for s in g.samples])).view(len(groups), 2, -1)
    ranks = rank_tensor(groups, ASPECTS, ASPECTS[0])
    return [pairwise_accuracy(scores[..., i], ranks[..., i]).accuracy for i in range(len(ASPECTS))]


def test_training_raises_each_attribute_accuracy_well_above_chance(trained):
    trainer, summary, _, held = trained
    before = _accuracy(build_attribute_strength_model(ASPECTS, 14, H, "transformer", 16, 1, 2, seed=0), held)
    after = _accuracy(trainer.model, held)
    assert all(a > 0.8 for a in after), (before, after)
    assert all(a - b > 0.2 for a, b in zip(after, before)), (before, after)
    # the trainer logged the same per-aspect held-out accuracies (its eval_path is the held-out set)
    logged = summary["held_out_accuracy_by_aspect"]
    assert [logged[a] for a in ASPECTS] == pytest.approx(after, abs=1e-9)
    assert summary["held_out_accuracy"] == pytest.approx(after[0], abs=1e-9)


def test_relabel_normalises_over_the_dataset_and_follows_the_true_attribute(trained):
    model = trained[0].model
    data = synthetic_trajectories(120, H, seed=7)
    raw = model.scores(data).detach()
    s = relabel(data, model, batch_size=50)                    # AlignDiff's min-max over the dataset
    assert s.shape == (120, 2) and (s.amin(dim=0) == 0).all() and (s.amax(dim=0) == 1).all()
    lo, hi = raw.amin(dim=0), raw.amax(dim=0)
    torch.testing.assert_close(s, (raw - lo) / (hi - lo))
    ranked = relabel(data, model, method="rank")
    assert sorted(ranked[:, 0].tolist()) == pytest.approx([i / 119 for i in range(120)])   # ranks, no ties
    with pytest.raises(ValueError, match="must be one of"):
        relabel(data, model, method="zscore")
    true = attribute_values(data, ASPECTS)
    for i in range(2):   # Spearman correlation of the strengths with the true attribute
        r = rank_normalise(true[:, i:i + 1])[:, 0]
        rho = torch.corrcoef(torch.stack([s[:, i], r]))[0, 1]
        assert rho > 0.9, (ASPECTS[i], float(rho))


def test_rank_normalise_and_empirical_cdf_closed_form():
    v = torch.tensor([[3.0], [1.0], [2.0], [2.0]])
    assert rank_normalise(v)[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.5, 0.5])
    assert minmax_normalise(torch.tensor([[1.0, 4.0]]), torch.tensor([0.0, 4.0]), torch.tensor([4.0, 4.0])).tolist() \
        == [[0.25, 0.5]]                                       # a constant attribute sits at 0.5
    ref = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    cdf = empirical_cdf(torch.tensor([[-1.0], [1.0], [1.5], [9.0]]), ref)[:, 0]
    assert cdf.tolist() == pytest.approx([0.0, 1.5 / 4, 2 / 4, 1.0])
    with pytest.raises(ValueError, match="at least 2 segments"):
        rank_normalise(torch.zeros(1, 1))


def test_saved_model_loads_by_load_reward_and_scores_requests(trained):
    from diffalign.rewards.loading import load_reward
    trainer, _, tmp, _ = trained
    model = trainer.model
    data = synthetic_trajectories(40, H, seed=8)
    calibrate(model, data)
    out = str(tmp / "calibrated")
    model.save(out)
    loaded = load_reward(out)
    assert isinstance(loaded, AttributeStrengthModel) and not loaded.training
    torch.testing.assert_close(loaded.scores(data), model.scores(data).detach())
    # no targets: the primary aspect's raw score, or the aspect asked for
    torch.testing.assert_close(loaded(data[:3]), model.scores(data[:3])[:, 0].detach())
    other = load_reward(out, aspect="torso_height")
    torch.testing.assert_close(other(data[:3]), model.scores(data[:3])[:, 1].detach())
    # calibrated on the same data: a dataset segment's strength is its relabelled value
    st = loaded.strengths(data)
    assert loaded.strength_method == "minmax" and loaded.reference.shape == (2, 2)
    torch.testing.assert_close(st, relabel(data, model))
    ranked = load_reward(calibrate(model, data, method="rank").save(str(tmp / "ranked")))
    assert ranked.strength_method == "rank" and ranked.reference.shape == (2, 40)
    # mid-rank percentiles: relabel's ranks up to the scale N / (N - 1)
    assert ((ranked.strengths(data) - (relabel(data, model, "rank") * 39 + 0.5) / 40).abs() < 1e-5).all()
    items = [{"targets": {"speed": 0.9}}, {"targets": {"speed": 0.1, "torso_height": 0.5}}]
    reward = loaded(data[:2], items)
    expected = [-abs(st[0, 0] - 0.9), -(abs(st[1, 0] - 0.1) + abs(st[1, 1] - 0.5)) / 2]
    assert reward.tolist() == pytest.approx([float(e) for e in expected], abs=1e-6)
    with pytest.raises(ValueError, match="request none of the model's aspects"):
        loaded(data[:2], [items[0], {"targets": {"energy": 0.2}}])
    with pytest.raises(ValueError, match=r"expected segments \(B, 16, 14\)"):
        loaded(torch.zeros(2, 8, 14))
    with pytest.raises(ValueError, match="accepts only the keyword 'aspect'"):
        load_reward(out, scale=2)
    # the trainer's own folder holds the model before calibration: strengths need a reference
    uncalibrated = load_reward(str(tmp / "run" / "reward"))
    with pytest.raises(ValueError, match="no calibration reference"):
        uncalibrated(data[:2], items)


def test_segment_pairs_become_ranked_groups(tmp_path):
    path = write_synthetic_segment_labels(tmp_path, ["speed"], num_segments=10, num_pairs=6, horizon=4,
                                          tie_margin=0.5, seed=1)
    groups, report = read_segment_comparisons(path)
    from diffalign.data.segment_labels import read_segment_labels
    prefs = read_segment_labels(path)
    assert len(segment_comparisons(prefs)) == len(groups) == 6 and report.kept == 6
    for g, y in zip(groups, prefs.labels.tolist()):
        assert g.prompt == "speed" and len(g.samples) == 2
        assert g.ranks["speed"] == {1.0: [1.0, 2.0], 0.0: [2.0, 1.0], 0.5: [1.0, 1.0]}[y]


def test_config_checks_the_kind_against_the_data(tmp_path):
    with pytest.raises(ConfigError, match="model.kind' = 'clip' does not fit"):
        _config(tmp_path, model={"kind": "clip", "encoder": {}})
    with pytest.raises(ConfigError, match="model.kind' must be one of"):
        _config(tmp_path, model={"kind": "audio"})
    with pytest.raises(ConfigError, match="model.encoder'.*unexpected keyword argument 'depth'"):
        _config(tmp_path, model={"encoder": {"depth": 3}})
    with pytest.raises(ConfigError, match="data.synthetic'"):
        _config(tmp_path, data={"synthetic": {"pairs": 3}})
    cfg = _config(tmp_path, data={"path": str(tmp_path), "format": "segments", "synthetic": {}})
    assert cfg.model.kind == "trajectory"


def test_trainer_segments_format_matches_the_reader():
    from diffalign.data.segment_labels import SEGMENTS_FORMAT
    from diffalign.trainer import reward_model
    assert reward_model.SEGMENTS_FORMAT == SEGMENTS_FORMAT


def test_model_arguments_are_checked():
    with pytest.raises(ValueError, match="encoder must be one of"):
        AttributeStrengthModel(["speed"], 14, 8, encoder="rnn")
    with pytest.raises(ValueError, match="width divisible by heads"):
        AttributeStrengthModel(["speed"], 14, 8, width=10, heads=3)
    m = build_attribute_strength_model(["speed", "energy"], 14, 8, encoder="mlp", width=8, seed=3)
    assert m.scores(torch.randn(5, 8, 14)).shape == (5, 2)
    assert torch.equal(m.head.weight, build_attribute_strength_model(["speed", "energy"], 14, 8, "mlp", 8,
                                                                     seed=3).head.weight)


def test_matching_metrics_on_known_inputs():
    nan = math.nan
    requested = [[0.2, nan], [0.5, 0.5], [nan, nan], [1.0, 0.0]]
    achieved = [[0.25, 0.9], [0.5, 0.8], [0.3, 0.3], [0.7, 0.05]]
    # sample errors: 0.05 (one attribute), (0 + 0.3) / 2, (dropped: nothing requested), (0.3 + 0.05) / 2
    assert per_sample_error(requested, achieved).tolist() == pytest.approx([0.05, 0.15, 0.175])
    assert attribute_mae(requested, achieved) == pytest.approx((0.05 + 0.15 + 0.175) / 3)
    assert match_rate(requested, achieved, 0.1) == pytest.approx(1 / 3)
    assert match_rate(requested, achieved, 0.31) == pytest.approx(1.0)
    m = matching_metrics(requested, achieved, 0.1)
    assert m["n"] == 3 and m["tolerance"] == 0.1 and m["match_rate"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="must both be"):
        attribute_mae([[0.1, 0.2]], [[0.1]])
    with pytest.raises(ValueError, match="no sample requests"):
        match_rate([[nan]], [[0.1]])
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        match_rate([[0.1]], [[0.1]], -0.1)



def test_shipped_config_trains_a_loadable_model(tmp_path):
    """behaviour_strength_tiny as README names it, shortened (1 epoch, 200 pairs): the model it saves loads."""
    from diffalign.cli.train import shipped_config
    from diffalign.rewards.loading import load_reward
    from diffalign.trainer.reward_model import load_reward_train_config, train_reward_model
    out = tmp_path / "run"
    cfg = load_reward_train_config(shipped_config("behaviour_strength_tiny"),
                                   [f"output_dir={out}", "epochs=1", "data.synthetic.num_pairs=200",
                                    "data.synthetic.num_segments=40"])
    summary = train_reward_model(cfg)
    assert summary["train_groups"] == 160 and summary["held_out_groups"] == 40
    model = load_reward(str(out / "reward"))
    assert isinstance(model, AttributeStrengthModel)
    assert model.aspects == ["speed", "torso_height", "jump_height"] and model.horizon == 32
    assert model.scores(synthetic_trajectories(3, 32)).shape == (3, 3)
