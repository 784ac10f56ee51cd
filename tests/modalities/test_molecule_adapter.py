"""The molecule adapter against independent references: E(3) equivariance of the sampler (float64), the
centre-of-mass-free subspace with padded atoms at zero, ratio = 1 on policy with mixed atom counts, the
subspace log-prob, drawn atom counts, model folders and config errors."""
import math
import os

import pytest
import torch

from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.mdp.chain import run_chain
from diffalign.modalities.molecule import MoleculeAdapter, SizeDistribution, center_ligand
from diffalign.modalities.molecule.pocket import space_size

SMALL = dict(hidden=16, layers=2, max_atoms=8, min_atoms=3, max_pocket_atoms=24)


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def posebusters_item(cid="1of6", **extra):
    """A prompt item for one of the complexes the posebusters package ships, centred on its crystal ligand."""
    import posebusters

    from diffalign.modalities.molecule.sdf import read_sdf
    folder = os.path.join(os.path.dirname(posebusters.__file__), "datasets", "pdb", cid)
    ligand = read_sdf(os.path.join(folder, f"{cid}_ligand.sdf"))
    center = torch.tensor(ligand.GetConformer().GetPositions()).mean(0).tolist()
    return {"pocket": os.path.join(folder, f"{cid}_protein_one_lig_removed.pdb"), "center": center, **extra}


@pytest.fixture(scope="module")
def adapter():
    return MoleculeAdapter(**SMALL)


def synthetic_pocket(seed, p=20):
    g = torch.Generator().manual_seed(seed)
    coords = torch.randn(p, 3, generator=g, dtype=torch.float64) * 4 + torch.tensor([10.0, -3.0, 7.0], dtype=torch.float64)
    elements = tuple("CNOS"[i] for i in torch.randint(4, (p,), generator=g).tolist())
    return coords, elements


def random_rotation(seed):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# ---- equivariance -----------------------------------------------------------------------------------------
def test_rotating_and_translating_pocket_and_noise_moves_the_sample_the_same_way():
    """Float64 reference: the sample for (R p + s, R noise) is R sample + s in the PDB's coordinates, through
    the whole stochastic chain with its pre-drawn step noise rotated likewise; type features are invariant."""
    a = MoleculeAdapter(dtype=torch.float64, **SMALL)
    coords, elements = synthetic_pocket(0)
    R, shift = random_rotation(1), torch.tensor([3.0, -20.0, 5.5], dtype=torch.float64)
    sizes = [5, 8]
    cond = a.pocket_conditions([(coords, elements, coords.mean(0))] * 2, sizes)
    moved = coords @ R.T + shift
    cond_m = a.pocket_conditions([(moved, elements, moved.mean(0))] * 2, sizes)
    policy = DiffusionPolicy(a, make_step_rule("ddim", a.scheduler, 5, eta=1.0))
    g = torch.Generator().manual_seed(3)
    x_T = a.initial_noise(cond, g)
    noise = torch.randn(2, 5, a.max_atoms, a.num_features, generator=g, dtype=torch.float64)

    def rotate(t):  # coordinates rotate, type features do not
        return torch.cat([t[..., :3] @ R.T, t[..., 3:]], -1)

    with torch.no_grad():
        x0 = run_chain(policy, cond, x_T, noise=noise, record=True).states[-1]
        x0_m = run_chain(policy, cond_m, rotate(x_T), noise=rotate(noise), record=True).states[-1]
    assert x0[..., :3].abs().max() > 0.1  # a non-trivial sample
    for p, q in zip(a.absolute_coordinates(x0, cond), a.absolute_coordinates(x0_m, cond_m)):
        torch.testing.assert_close(q, p @ R.T + shift, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(x0_m[..., 3:], x0[..., 3:], atol=1e-9, rtol=1e-9)


def test_denoiser_output_rotates_with_its_input():
    a = MoleculeAdapter(dtype=torch.float64, **SMALL)
    coords, elements = synthetic_pocket(4)
    cond = a.pocket_conditions([(coords, elements, coords.mean(0))], [6])
    R = random_rotation(5)
    cond_r = dict(cond, pocket_pos=cond["pocket_pos"] @ R.T)
    x = a.initial_noise(cond, torch.Generator().manual_seed(0))
    t = torch.tensor([200])
    out, out_r = a.denoise(x, t, cond), a.denoise(torch.cat([x[..., :3] @ R.T, x[..., 3:]], -1), t, cond_r)
    torch.testing.assert_close(out_r[..., :3], out[..., :3] @ R.T, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out_r[..., 3:], out[..., 3:], atol=1e-10, rtol=1e-10)


# ---- the subspace ---------------------------------------------------------------------------------------------
def test_centre_of_mass_projection_against_a_direct_computation():
    x = torch.randn(3, 8, 10, dtype=torch.float64)
    mask = torch.tensor([[1.0] * 3 + [0.0] * 5, [1.0] * 8, [1.0] * 5 + [0.0] * 3], dtype=torch.float64)
    out = center_ligand(x, mask)
    for b, n in enumerate([3, 8, 5]):
        expected = x[b, :n].clone()
        expected[:, :3] -= x[b, :n, :3].mean(0)  # only the coordinates are centred
        torch.testing.assert_close(out[b, :n], expected)
        assert torch.all(out[b, n:] == 0)
    torch.testing.assert_close(center_ligand(out, mask), out)  # a projection


def test_states_stay_centred_with_padded_atoms_zero(adapter):
    items = [posebusters_item(num_atoms=n) for n in (3, 8, 5)]
    cond = adapter.encode_conditions(items)
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 4, eta=1.0))
    traj = policy.sample(cond, generator=gens([0, 1, 2]))
    m = cond["mask"][:, None, :, None]  # over (B, T+1, N, F)
    assert torch.all(traj.latents * (1 - m) == 0)
    com = (traj.latents[..., :3] * m).sum(2) / m.sum(2)
    assert com.abs().max() < 1e-5
    assert torch.all(cond["pocket_mask"].sum(1) == adapter.max_pocket_atoms)  # a whole protein: the nearest 24


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_ratio_is_one_on_policy_with_mixed_atom_counts(adapter, batch):
    items = [posebusters_item(num_atoms=3 + (5 * i) % 6) for i in range(batch)]
    cond = adapter.encode_conditions(items)
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 4, eta=1.0))
    traj = policy.sample(cond, generator=gens(range(batch)))
    for i in range(traj.num_steps):
        x_t, x_prev, old = traj.states_at(torch.full((batch,), i))
        new = policy.transition(x_t, i, cond, prev_sample=x_prev).log_prob
        torch.testing.assert_close(torch.exp(new - old), torch.ones(batch), atol=1e-5, rtol=0)


def test_step_log_prob_is_the_density_in_the_subspace(adapter):
    """Float64 reference: x_prev - mean lies in a d = 3 (n - 1) + K n dimensional subspace, where the 'sum'
    log-prob is log N(0, s^2 I_d)."""
    cond = adapter.encode_conditions([posebusters_item(num_atoms=6)])
    rule = make_step_rule("ddim", adapter.scheduler, 4, eta=1.0)
    policy = DiffusionPolicy(adapter, rule, logprob_reduction="sum")
    x_t = adapter.initial_noise(cond, torch.Generator().manual_seed(0))
    out = policy.transition(x_t, 1, cond, generator=torch.Generator().manual_seed(1))
    diff = (out.prev_sample - out.mean).detach().double()
    s = float(out.std.reshape(-1)[0].detach())
    d = 3 * 5 + 7 * 6
    expected = -(diff ** 2).sum() / (2 * s * s) - d * math.log(s) - d / 2 * math.log(2 * math.pi)
    assert abs(float(out.log_prob[0].detach()) - float(expected)) < 1e-3 * abs(float(expected))
    assert float(adapter.logprob_dims(cond, x_t)[0]) == d


# ---- drawn atom counts --------------------------------------------------------------------------------------
def test_atom_counts_are_drawn_per_sample_from_the_pocket_size_bin():
    a = MoleculeAdapter(**SMALL)
    item = posebusters_item()
    pos, _, _ = a.pocket_of(item)
    size = space_size(pos)
    # a fitted distribution: small pockets -> 3 atoms, large -> 7 or 8
    a.sizes = SizeDistribution.fit([size - 5, size + 5, size + 5], [3, 7, 8], bounds=[size], min_atoms=3, max_atoms=8)
    masks = a.encode_conditions([item] * 16, gens(range(16)))["mask"]
    assert set(masks.sum(1).tolist()) <= {7.0, 8.0} and len(set(masks.sum(1).tolist())) == 2
    assert torch.equal(masks, a.encode_conditions([item] * 16, gens(range(16)))["mask"])  # seeded
    assert torch.equal(a.encode_conditions([item], gens([5]))["mask"][0], masks[5])  # not batch-dependent
    a.sizes = SizeDistribution.fit([size + 5], [3], bounds=[size], min_atoms=3, max_atoms=8)
    assert set(a.encode_conditions([item] * 8, gens(range(8)))["mask"].sum(1).tolist()) == {3.0}
    # the fitted distribution travels with a saved model
    restored = SizeDistribution.from_dict(a.sizes.to_dict())
    torch.testing.assert_close(restored.probabilities(size + 1), a.sizes.probabilities(size + 1))


def test_sizes_fitted_from_complexes_follow_their_pocket_bins():
    a = MoleculeAdapter(**SMALL)
    small, large = posebusters_item("1uou"), posebusters_item("1of6")
    size_small, size_large = (space_size(a.pocket_of(it)[0]) for it in (small, large))
    bound = (size_small + size_large) / 2
    if size_small > size_large:
        small, large = large, small
    a.fit_sizes([small, large, large], [3, 6, 8], bounds=[bound])
    torch.testing.assert_close(a.sizes.probabilities(min(size_small, size_large)),
                               torch.tensor([1.0, 0, 0, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(a.sizes.probabilities(max(size_small, size_large)),
                               torch.tensor([0, 0, 0, 0.5, 0, 0.5], dtype=torch.float64))


def test_size_distribution_refuses_bad_input():
    with pytest.raises(ValueError, match="min_atoms <= max_atoms"):
        SizeDistribution(5, 3)
    with pytest.raises(ValueError, match="2 bins x 3 atom counts"):
        SizeDistribution(1, 3, bounds=[4.0], counts=[[1, 1, 1]])
    with pytest.raises(ValueError, match="atom count 9"):
        SizeDistribution.fit([1.0], [9], bounds=[], min_atoms=1, max_atoms=8)


# ---- model folders and errors -------------------------------------------------------------------------------
def test_a_saved_model_folder_loads_back_with_the_same_outputs(adapter, tmp_path):
    cond = adapter.encode_conditions([posebusters_item(num_atoms=5)])
    x = adapter.initial_noise(cond, torch.Generator().manual_seed(0))
    t = torch.tensor([250])
    with torch.no_grad():
        for p in adapter.denoiser.parameters():
            p.add_(0.01)  # differ from the seeded init
        expected = adapter.denoise(x, t, cond)
    adapter.save_pretrained(str(tmp_path / "model"))
    loaded = MoleculeAdapter(str(tmp_path / "model"), init_seed=7)
    assert loaded.max_atoms == adapter.max_atoms and loaded.sizes.to_dict() == adapter.sizes.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(loaded.denoise(x, t, cond), expected)
    with adapter.reference_mode(), torch.no_grad():  # the frozen reference is the model before training
        assert not torch.allclose(adapter.denoise(x, t, cond), expected)


def test_bad_models_options_and_items_are_named(tmp_path):
    from diffalign.modalities.molecule.options import MoleculeOptions
    with pytest.raises(ValueError, match="neither 'tiny' nor a folder"):
        MoleculeAdapter(str(tmp_path / "missing"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"hidden": 8, "colour": 1}')
    with pytest.raises(ValueError, match=r"config.json: unknown molecule model config keys \['colour'\]"):
        MoleculeAdapter(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="'hidden' must be an integer >= 1, got 'wide'"):
        MoleculeAdapter(hidden="wide")
    with pytest.raises(ValueError, match="'atom_types' must be a list"):
        MoleculeAdapter(atom_types=["C", "C"])
    with pytest.raises(ValueError, match="modality.options.max_atoms"):
        MoleculeOptions(max_atoms=0)
    with pytest.raises(ValueError, match="modality.options.dtype"):
        MoleculeOptions(dtype="bfloat16")
    with pytest.raises(ValueError, match="modality.options.min_atoms'/'max_atoms'"):
        MoleculeOptions(min_atoms=9, max_atoms=4)
    a = MoleculeAdapter(**SMALL)
    with pytest.raises(ValueError, match="must be a mapping with 'pocket'"):
        a.encode_conditions(["a pocket"])
    with pytest.raises(ValueError, match="num_atoms must be an integer in 1..8"):
        a.encode_conditions([posebusters_item(num_atoms=9)])
    with pytest.raises(ValueError, match="does not exist"):
        a.encode_conditions([{"pocket": str(tmp_path / "none.pdb")}])
    with pytest.raises(ValueError, match="no atom within pocket_radius"):
        a.encode_conditions([posebusters_item(center=[999.0, 0.0, 0.0])])


def test_config_check_names_the_field():
    from diffalign.config import load_config, resolve_config_path
    with pytest.raises(ValueError, match="modality.options.layers"):
        load_config(resolve_config_path("molecule_ddpo_tiny"), overrides=["modality.options.layers=0"])
