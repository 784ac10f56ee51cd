"""``diffalign demo threed --quick`` end to end (SDS vs DreamFL, multi-view accuracy over 16 views all around), and
its argument checks."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.cli import main
from diffalign.demo import threed
from diffalign.eval.multiview import MIN_VIEWS, multiview_accuracy


def _cli(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    import contextlib
    import io
    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("threed_demo"))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert _cli(["demo", "threed", "--quick", "--output", out, "--prompt", "a blue square"]) == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    report["_stdout"] = stdout.getvalue()
    return out, report


def test_quick_threed_demo_writes_the_demo_report_schema(quick_run):
    out, report = quick_run
    assert report["modality"] == "threed" and report["algo"] == "dreamfl" and report["baseline"] == "sds"
    assert report["prompt"] == "a blue square" and report["quick"]
    assert {"model", "flags", "torch_threads"} <= set(report["hardware"]) and report["seconds"]["total"] > 0
    for stage in ("before", "after"):
        acc = report[stage]
        assert acc["n_views"] == MIN_VIEWS and len(acc["correct"]) == MIN_VIEWS
        assert acc["accuracy"] == pytest.approx(np.mean(acc["correct"]))
        assert acc["ci95"][0] <= acc["accuracy"] <= acc["ci95"][1]
    assert report["paired"]["all"]["n"] == MIN_VIEWS
    assert report["delta"]["accuracy"] == pytest.approx(report["after"]["accuracy"] - report["before"]["accuracy"])
    gaps = np.diff(report["eval"]["azimuths"])
    assert np.allclose(gaps, 360 / MIN_VIEWS)
    # both runs took the same steps from the same seed; only DreamFL logs the reward of its rendered views
    assert report["runs"]["sds"]["epochs"] == report["runs"]["dreamfl"]["epochs"] >= 1
    assert all("loss" in c for c in report["curves"]["sds"]) and all("reward" in c for c in report["curves"]["dreamfl"])
    assert not any("reward" in c for c in report["curves"]["sds"])
    for method in ("sds", "dreamfl"):
        for kind in ("png", "gif"):
            assert os.path.getsize(os.path.join(out, report["files"]["turntables"][method][kind])) > 0
        mesh = report["files"]["meshes"][method]
        assert mesh is None or os.path.getsize(os.path.join(out, mesh)) > 0
    for name in ("report.md", "curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    md = open(os.path.join(out, "report.md")).read()
    assert "multi-view accuracy" in md and "McNemar" in md and "turntable_dreamfl.png" in md


def test_quick_threed_demo_summary_line_does_not_call_the_views_held_out(quick_run, capsys):
    out, report = quick_run
    line = report["_stdout"]
    assert "multi-view accuracy (views all around the object)" in line and "held-out" not in line


def test_quick_threed_demo_views_reproduce_the_report(quick_run):
    out, report = quick_run
    with open(os.path.join(out, "samples", "prompts.json")) as f:
        index = json.load(f)
    assert len(index) == 2 * MIN_VIEWS
    for stage, method in (("before", "sds"), ("after", "dreamfl")):
        names = sorted(n for n in index if index[n]["method"] == method)
        entries = [index[n] for n in names]
        assert [e["azimuth"] for e in entries] == pytest.approx(report["eval"]["azimuths"])
        assert {e["prompt"] for e in entries} == {"a blue square"} and {e["seed"] for e in entries} == {0}
        assert {e["elevation"] for e in entries} == {threed.EVAL_CAMERA["elevation"]}
        views = np.stack([np.asarray(Image.open(os.path.join(out, "samples", n)).convert("RGB")) for n in names])
        again = multiview_accuracy(views, "a blue square", azimuths=[e["azimuth"] for e in entries])
        assert again["correct"] == report[stage]["correct"] == [e["correct"] for e in entries]


def test_threed_demo_arguments_are_checked(tmp_path, capsys):
    assert _cli(["demo", "video", "--prompt", "a red circle", "--output", str(tmp_path)]) == 2
    assert "--prompt applies to the threed demo only" in capsys.readouterr().err
    assert _cli(["demo", "threed", "--algo", "nerf", "--output", str(tmp_path)]) == 2
    assert "unknown --algo 'nerf' for threed; choose one of: dreamdpo, dreamfl" in capsys.readouterr().err
    # the baseline is refused by the CLI's check, before anything loads (it used to fail inside the demo)
    assert _cli(["demo", "threed", "--algo", "sds", "--output", str(tmp_path)]) == 2
    assert "'sds' is the baseline the threed demo always runs" in capsys.readouterr().err
    assert _cli(["demo", "threed", "--prompt", "a purple circle", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad word 'purple'" in err
    for word in ("'red'", "'green'", "'blue'", "'yellow'", "'circle'", "'square'", "'triangle'", "'two'",
                 "'left of'", "'above'"):
        assert word in err, word
    assert not os.listdir(tmp_path)  # nothing ran
    with pytest.raises(ValueError, match="not a caption of the shapes world"):
        threed.run_threed_demo(str(tmp_path), prompt="a purple hexagon")
    with pytest.raises(ValueError, match="is the baseline"):
        threed.run_threed_demo(str(tmp_path), algo="sds")
    assert threed.check_prompt("two blue squares") == "" and threed.check_algo("dreamfl") == ""
    with pytest.raises(ValueError, match="at least 16"):
        threed.run_threed_demo(str(tmp_path), samples_per_kind=8)
    assert threed.threed_algos() == ["dreamdpo", "dreamfl", "sds"]
