"""benchmarks/report.py: docs/results.md and README's headline block are what it generates from the committed
results (so the documents cannot drift from the JSON), and the renderer of the demo default's results file."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_default(shape: str) -> dict:
    """A results file of the default's runs: "brief" as first specified (changes as fractions), "points" the
    same with changes in points, "bench" as benchmarks/bench_demo.py --json writes it."""
    def acc(total, single, count, relation):
        return {"accuracy": total, "accuracy/single": single, "accuracy/count": count, "accuracy/relation": relation}
    base = acc(0.2604, 0.3021, 0.3854, 0.0938)
    scale = 100 if shape == "points" else 1
    runs = []
    for seed, after, ci, p in ((0, acc(0.4167, 0.6875, 0.4688, 0.0938), (0.0711, 0.2411), 0.000137),
                               (1, acc(0.3993, 0.6458, 0.4583, 0.0938), (0.0521, 0.2257), 0.00212)):
        run = {"seed": seed, "epochs": 83 + seed, "before": base, "after": after,
               "delta": (after["accuracy"] - base["accuracy"]) * scale, "ci95": [c * scale for c in ci],
               "mcnemar_p": p, "improved": 61 + seed, "worsened": 16}
        if shape == "bench":
            run.update(wall_seconds=812.3 + seed, seconds={"total": 800.0 + seed}, precision="no",
                       precision_reason="no bf16 matrix units on this CPU",
                       per_kind={"single": {"delta": 0.3854, "ci95": [0.25, 0.51], "mcnemar_p": 1.2e-07,
                                            "fixed": 40, "broken": 3}})
        else:
            run["seconds_total"] = 812.3 + seed
        runs.append(run)
    data = {"what": "diffalign demo, the default (rwr), float32 on a CPU without bf16 units",
            "cpu": "AMD EPYC 7B13", "cpu_flags": ["avx2"], "threads": 2,
            "command": ".venv/bin/diffalign demo --seed N --output DIR", "base": base, "runs": runs}
    if shape == "bench":
        data.update(date="2026-12-01", emulate_avx2=True,
                    env={"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
                    eval={"samples_per_kind": 96})
    else:
        data["precision"] = "no"
    return data


def test_committed_results_doc_is_what_report_generates():
    report = _load()
    assert (ROOT / "docs" / "results.md").read_text(encoding="utf-8") == report.render_results(report.RESULTS), \
        "docs/results.md is stale: run `python benchmarks/report.py`"


def test_readme_headline_block_is_what_report_generates():
    report = _load()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme == report.replace_block(readme, report.render_headline(report.RESULTS)), \
        "README.md's generated block is stale: run `python benchmarks/report.py`"


def test_check_mode_passes_on_the_committed_files_and_fails_on_a_stale_one(tmp_path, capsys):
    report = _load()
    assert report.main(["--check"]) == 0
    stale = tmp_path / "results.md"
    stale.write_text("# hand-edited\n")
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text(encoding="utf-8"))
    assert report.main(["--check", "--doc", str(stale), "--readme", str(readme)]) == 1
    assert "not what benchmarks/report.py writes" in capsys.readouterr().err
    assert stale.read_text() == "# hand-edited\n"  # --check writes nothing
    assert report.main(["--doc", str(stale), "--readme", str(readme)]) == 0
    assert report.main(["--check", "--doc", str(stale), "--readme", str(readme)]) == 0


def test_every_results_file_appears_in_the_doc():
    report = _load()
    doc = report.render_results(report.RESULTS)
    for path in report.result_files(report.RESULTS):
        assert f"benchmarks/results/{path.name}" in doc, path.name


@pytest.mark.parametrize("shape", ["brief", "points", "bench"])
def test_demo_default_renderer(tmp_path, shape):
    """The demo default's file: its numbers reach the results table and README's headline, whether the file
    states the change (and its interval) as accuracy fractions or in points, in either file layout."""
    report = _load()
    results = tmp_path / "results"
    results.mkdir()
    name = "demo_default_epyc7b13_2026-12-01.json"
    (results / name).write_text(json.dumps(_demo_default(shape)))
    doc = report.render_results(results)
    assert f"benchmarks/results/{name}" in doc
    assert "AMD EPYC 7B13" in doc and "avx2" in doc and "precision float32" in doc
    assert "26.0% -> **41.7%**" in doc and "**+15.6** [+7.1, +24.1]" in doc  # seed 0: before, after, change, CI
    assert "0.00014" in doc and "61 / 16" in doc and "13.5" in doc  # McNemar p, fixed / broken, minutes (812.3 s)
    assert "68.8 / 46.9 / 9.4" in doc  # the kinds after training
    assert "change +13.9 to +15.6 points, mean +14.8; 2 of 2 reach +10" in doc
    if shape == "bench":
        assert "single +38.5 (p 1.2e-07)" in doc and "emulating a CPU without AVX-512" in doc
        assert "no bf16 matrix units on this CPU" in doc and "samples_per_kind 96" in doc
    headline = report.render_headline(results)
    assert "AMD EPYC 7B13" in headline and "26.0% -> **41.7%**" in headline and name in headline
    assert "demo_rwr" not in headline  # the default's own file replaces the earlier runs


def test_headline_falls_back_to_the_default_rows_of_the_earlier_runs():
    report = _load()
    headline = report.render_headline(report.RESULTS)
    if any(p.name.startswith("demo_default_") for p in report.result_files(report.RESULTS)):
        pytest.skip("the default's own results file is committed")
    assert report.DEMO_RWR_FILE in headline
    rows = [line for line in headline.splitlines() if line.startswith("| ") and "% -> " in line]
    assert len(rows) == 7 and "28.1% -> **41.0%**" in rows[0]


def test_replace_block_needs_the_markers():
    report = _load()
    with pytest.raises(ValueError):
        report.replace_block("# no markers here\n", "x")
    text = f"a\n{report.HEADLINE_START}\nold\n{report.HEADLINE_END}\nb\n"
    assert report.replace_block(text, "new") == f"a\n{report.HEADLINE_START}\nnew\n{report.HEADLINE_END}\nb\n"


def test_demo_offline_renderer_shows_the_runs_and_their_short_run_conditions(tmp_path):
    report = _load()
    results = tmp_path / "results"
    results.mkdir()
    name = "demo_offline_simpo_cpu_2core_2026-12-07.json"
    (results / name).write_text(json.dumps(dict(_demo_default("bench"), what="diffalign demo --algo simpo",
                                                 command="diffalign demo --algo simpo demo.feedback=fb/seed{seed}")))
    assert report.renderer_for(name) == ("demo", report.render_demo_offline)
    doc = report.render_results(results)
    assert "### diffalign demo --algo simpo" in doc and "demo.feedback=" in doc
    assert "26.0% -> 41.7%" in doc.replace("**", "") and "AMD EPYC 7B13" in doc
    # the summary over every offline loss's file comes first, with the conditions the short runs share
    assert doc.index("### The offline losses on the same AI feedback") < doc.index("demo.feedback=") < \
        doc.index("### diffalign demo --algo simpo")
    assert "| `simpo` | 2 | 26.0% | 41.7% / 39.9% | +15.6 / +13.9 | +14.8 | 13.5 / 13.6 | 123 / 32 |" in doc
    # a file's label tells its row apart (another code version of the same loss); its note heads its block
    (results / name).write_text(json.dumps(dict(_demo_default("bench"), what="diffalign demo --algo simpo",
                                                 command="diffalign demo --algo simpo", label="first adaptation",
                                                 note="Measured before the bounded score.")))
    doc = report.render_results(results)
    assert "| `simpo` (first adaptation) | 2 |" in doc
    assert "### diffalign demo --algo simpo\n\nMeasured before the bounded score.\n\nMachine:" in doc


def test_bench_demo_gives_each_seed_its_own_arguments():
    spec = importlib.util.spec_from_file_location("bench_demo", ROOT / "benchmarks" / "bench_demo.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.seed_args(["--algo", "ipo", "demo.feedback=fb/seed{seed}"], 2) == \
        ["--algo", "ipo", "demo.feedback=fb/seed2"]


def test_molecule_summary_states_the_vina_gain_sign_and_the_goal():
    """Vina energies fall as binding improves: the gain is before - after, and the goal needs >= 0.5 kcal/mol with
    validity within 5 points and QED not lower by more than 0.05 (issue 25)."""
    report = _load()

    def run(seed, vina_after, validity_after, qed_after):
        return {"seed": seed, "algo": "e2po", "before": {"vina_min_mean": -4.6, "validity": 0.40, "qed_mean": 0.59},
                "after": {"vina_min_mean": vina_after, "validity": validity_after, "qed_mean": qed_after}}
    worse = run(0, -4.5, 0.27, 0.67)
    assert not report.molecule_meets_goal(worse)
    (line,) = report.molecule_summary({"runs": [worse]})
    assert "gain (before - after, positive binds better) -0.10 kcal/mol" in line and "0 of 1 meet" in line
    good = run(1, -5.2, 0.42, 0.57)
    assert report.molecule_meets_goal(good)
    assert not report.molecule_meets_goal(run(2, -5.2, 0.30, 0.59))       # validity fell 10 points
    assert not report.molecule_meets_goal(run(3, -5.2, 0.40, 0.50))       # QED fell 0.09
    assert not report.molecule_meets_goal(run(4, None, 0.40, 0.59))       # nothing scored after
    (line,) = report.molecule_summary({"runs": [worse, good]})
    assert "-0.10 to +0.60 kcal/mol" in line and "1 of 2 meet" in line
