"""``diffalign eval preference``: pairwise accuracy with the stated tie policy, on every data layout and
any reward load_reward accepts, end to end through the CLI."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.eval.preference import evaluate_preference, format_table, score_samples


def _smooth(path, size=16, value=128):
    Image.new("RGB", (size, size), (value, value, value)).save(path)


def _noisy(path, size=16, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def pairs_file(tmp_path):
    """4 pairs: the chosen image is flat (small JPEG), the rejected one noise; sizes differ between pairs."""
    rows = []
    for i in range(4):
        size = 16 if i % 2 else 24
        _smooth(tmp_path / f"s{i}.png", size, 40 * i)
        _noisy(tmp_path / f"n{i}.png", size, i)
        rows.append({"prompt": f"p{i}", "chosen": f"s{i}.png", "rejected": f"n{i}.png"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_accuracy_of_a_known_reward_and_its_opposite(pairs_file):
    from diffalign.rewards import jpeg_compressibility, jpeg_incompressibility
    good = evaluate_preference(jpeg_compressibility, str(pairs_file), progress=False, batch_size=3)
    bad = evaluate_preference(jpeg_incompressibility, str(pairs_file), progress=False)
    assert (good["accuracy"], good["n_pairs"], good["n_ties"]) == (1.0, 4, 0)
    assert bad["accuracy"] == 0.0 and bad["n_pairs"] == 4
    assert "excluded" in good["tie_policy"] and "0.5" in good["tie_policy"]
    assert "accuracy" in format_table(dict(good, reward="jpeg_compressibility"))


def test_score_ties_count_half(pairs_file):
    constant = lambda images, prompts: torch.zeros(images.shape[0])  # noqa: E731
    out = evaluate_preference(constant, str(pairs_file), progress=False)
    assert out["accuracy"] == 0.5 and out["n_score_ties"] == 4


def test_scores_are_batched_by_shape_and_match_direct_calls(pairs_file):
    from diffalign.data.types import load_sample
    from diffalign.rewards import jpeg_size_kb
    calls = []

    def reward(images, prompts):
        calls.append(tuple(images.shape))
        return jpeg_size_kb(images)

    refs = [(str(pairs_file.parent / f"s{i}.png"), "p") for i in range(4)]
    got = score_samples(reward, refs, batch_size=4, progress=False)
    assert sorted(calls) == [(2, 3, 16, 16), (2, 3, 24, 24)]
    for (ref, _), g in zip(refs, got.tolist()):
        arr = torch.from_numpy(np.asarray(load_sample(ref), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        assert g == pytest.approx(float(jpeg_size_kb(arr)[0]))
    with pytest.raises(ValueError, match="one\\s+finite score"):
        score_samples(lambda x, p: torch.full((x.shape[0],), math.nan), refs, 4, progress=False)


def test_label_ties_are_counted_and_excluded(tmp_path):
    """Ties in a ranked file (kept, excluded from the accuracy) and ties Pick-a-Pic rows carry (skipped at load)."""
    for i in range(3):
        _smooth(tmp_path / f"s{i}.png", value=50 * i)
        _noisy(tmp_path / f"n{i}.png", seed=i)
    rows = [{"prompt": "a", "images": ["s0.png", "n0.png", "n1.png"], "ranks": [1, 2, 2]},
            {"prompt": "b", "chosen": "s1.png", "rejected": "n2.png", "tie": True},
            {"prompt": "c", "chosen": "s2.png", "rejected": "n2.png", "tie": False}]
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from diffalign.rewards import jpeg_compressibility
    out = evaluate_preference(jpeg_compressibility, str(ranked), progress=False)
    # pairs: (s0,n0), (s0,n1) from the group, (s2,n2); ties: (n0,n1) and the flagged pair
    assert (out["n_pairs"], out["n_ties"], out["accuracy"]) == (3, 2, 1.0)
    import pyarrow as pa
    import pyarrow.parquet as pq

    def encoded(name):  # Pick-a-Pic stores encoded image bytes (PNG here; the reader decodes any format)
        return (tmp_path / name).read_bytes()
    table = pa.table({"caption": ["x", "y", "z"],
                      "jpg_0": [encoded("s0.png"), encoded("n0.png"), encoded("s1.png")],
                      "jpg_1": [encoded("n1.png"), encoded("s2.png"), encoded("n2.png")],
                      "label_0": [1.0, 0.0, 0.5], "label_1": [0.0, 1.0, 0.5]})
    pq.write_table(table, tmp_path / "pick.parquet")
    with pytest.warns(UserWarning, match="ties"):
        out = evaluate_preference(jpeg_compressibility, str(tmp_path / "pick.parquet"), progress=False)
    assert (out["n_pairs"], out["n_ties"], out["n_ties_skipped_at_load"], out["accuracy"]) == (2, 1, 1, 1.0)


def test_multi_aspect_file_needs_an_aspect(tmp_path):
    _smooth(tmp_path / "a.png")
    _noisy(tmp_path / "b.png")
    path = tmp_path / "mhp.jsonl"
    path.write_text(json.dumps({"prompt": "p", "images": ["a.png", "b.png"],
                                "ranks": {"aesthetics": [1, 2], "detail": [2, 1]}}) + "\n")
    from diffalign.rewards import jpeg_compressibility
    with pytest.raises(ValueError, match="--aspect"):
        evaluate_preference(jpeg_compressibility, str(path), progress=False)
    assert evaluate_preference(jpeg_compressibility, str(path), aspect="aesthetics", progress=False)["accuracy"] == 1.0
    assert evaluate_preference(jpeg_compressibility, str(path), aspect="detail", progress=False)["accuracy"] == 0.0


def test_cli_with_a_named_reward(pairs_file, tmp_path, capsys):
    from diffalign.cli import main
    out = tmp_path / "res" / "acc.json"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "preference", "--reward", "jpeg_compressibility", "--data", str(pairs_file),
              "--output", str(out), "--no-progress"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "tie policy" in printed
    res = json.loads(out.read_text())
    assert (res["accuracy"], res["n_pairs"], res["n_ties"]) == (1.0, 4, 0) and res["reward"] == "jpeg_compressibility"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "preference", "--reward", "no_such_reward", "--data", str(pairs_file)])
    assert exc.value.code == 1 and "no_such_reward" in capsys.readouterr().err


def test_cli_with_a_trained_reward_folder(tmp_path, capsys):
    """Train the tiny config briefly, then evaluate its folder; the CLI's accuracy equals the model's own scores."""
    from diffalign.cli import main
    from diffalign.data.types import load_sample
    from diffalign.rewards.loading import load_reward
    from diffalign.rewards.training.data import rank_tensor, read_comparisons
    from diffalign.rewards.training.metrics import pairwise_accuracy
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["reward", "train", "reward_bt_tiny", f"output_dir={run}", "epochs=3", "logging.progress_bar=false",
              "logging.tensorboard=false", "data.synthetic={num_groups: 40, group_size: 3, image_size: 16, levels: 3}"])
    assert exc.value.code == 0
    data = run / "synthetic_data" / "comparisons.jsonl"
    out = tmp_path / "acc.json"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "preference", "--reward", str(run / "reward"), "--data", str(data), "--output", str(out),
              "--batch-size", "7", "--no-progress"])
    assert exc.value.code == 0
    res = json.loads(out.read_text())
    groups, _ = read_comparisons(str(data))
    model = load_reward(str(run / "reward"))
    with torch.no_grad():
        scores = torch.stack([model([load_sample(s) for s in g.samples], [g.prompt] * 3) for g in groups])
    ref = pairwise_accuracy(scores, rank_tensor(groups, ["overall"], "overall")[..., 0])
    assert res["n_pairs"] == ref.n_pairs and res["n_ties"] == ref.n_ties > 0
    assert res["accuracy"] == pytest.approx(ref.accuracy)
    # the held-out split the trainer wrote gives back the trainer's own final held-out accuracy
    with pytest.raises(SystemExit) as exc:
        main(["eval", "preference", "--reward", str(run / "reward"), "--data", str(run / "held_out.jsonl"),
              "--output", str(out), "--no-progress"])
    assert exc.value.code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(summary["held_out_accuracy"])
