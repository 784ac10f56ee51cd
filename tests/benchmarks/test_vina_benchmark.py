"""benchmarks/bench_vina.py: its ligands are noisy copies of the crystal ligand, and (slow) a run reports
throughput with every molecule scored."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rdkit")
ROOT = Path(__file__).resolve().parents[2]


def bench():
    spec = importlib.util.spec_from_file_location("bench_vina", ROOT / "benchmarks" / "bench_vina.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_perturbed_ligands_are_seeded_noisy_copies():
    b = bench()
    a, c = b.perturbed_ligands(2, sigma=0.3, seed=1), b.perturbed_ligands(2, sigma=0.3, seed=1)
    xa = [m.GetConformer().GetPositions() for m in a]
    assert np.array_equal(xa[0], c[0].GetConformer().GetPositions())  # seeded
    shift = np.linalg.norm(xa[0] - xa[1], axis=1)
    assert 0.0 < shift.mean() < 1.5 and a[0].GetNumAtoms() == 27


@pytest.mark.slow
def test_a_run_scores_every_molecule():
    rows = bench().main(["--molecules", "2", "--workers", "1", "--mode", "score"])
    assert len(rows) == 1 and rows[0]["stats"] == {"ok": 3}  # the warm-up molecule and the two timed
    assert rows[0]["seconds"] > 0 and rows[0]["reward_mean"] > 5
