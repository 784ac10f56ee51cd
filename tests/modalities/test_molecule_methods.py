"""The molecule modality through the same trainer as every modality: DDPO and GRPO (online rollouts) and
Diffusion-DPO and E2PO (preference pairs built by sampling per pocket and ranking by a reward, AI feedback) each
raise the geometric pocket_contact reward from its tiny config. The base model is the tiny EGNN after the
fragment pretraining stand-in (modality.options.pretrain_steps), float32."""
import json
import os

import pytest
import torch

from diffalign.config import load_config, resolve_config_path
from diffalign.trainer import make_trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POCKET = {"pocket": os.path.join(REPO, "modalities", "molecule", "pockets", "1uou_pocket10.pdb"),
          "center": [-3.483, 2.004, 29.185]}
FAST = ["logging.tensorboard=false", "logging.progress_bar=false", "modality.options.pretrain_steps=50",
        "prompts.list=" + json.dumps([POCKET])]


def mean(values):
    return sum(values) / len(values)


def online(name, tmp_path, *extra):
    cfg = load_config(resolve_config_path(name), overrides=FAST + [f"output_dir={tmp_path}", *extra])
    trainer = make_trainer(cfg)
    seen = []
    inner = trainer.reward_fn
    trainer.reward_fn = lambda mols, items: seen.append((list(mols), list(items))) or inner(mols, items)
    history = trainer.train()
    return trainer, history, seen


def test_ddpo_raises_pocket_contact_and_rewards_see_molecules_or_none(tmp_path):
    trainer, history, seen = online("molecule_ddpo_tiny", tmp_path, "epochs=6", "sampling.num_steps=6")
    rewards = [h["reward_mean"] for h in history]
    assert mean(rewards[-2:]) > rewards[0] + 1.0, rewards
    from rdkit import Chem
    mols, items = seen[0]
    assert all(m is None or isinstance(m, Chem.Mol) and m.GetNumConformers() == 1 for m in mols)
    assert len(mols) == 32 and all(it == POCKET for it in items)  # batch order kept, invalid ones as None
    stats = trainer.adapter.decode_stats
    assert stats["samples"] == 6 * 32 and stats["valid"] + sum(v for k, v in stats.items() if k.startswith("invalid_")) \
        == stats["samples"]


@pytest.mark.slow
def test_grpo_raises_pocket_contact(tmp_path):
    _, history, _ = online("molecule_grpo_tiny", tmp_path, "epochs=6", "sampling.num_steps=6")
    rewards = [h["reward_mean"] for h in history]
    assert mean(rewards[-2:]) > rewards[0] + 1.0, rewards


def ai_feedback_pairs(cfg, out_dir, n=128, threshold=0.1):
    """Sample n ligands for the pocket with the config's base model, score them with pocket_contact and keep every
    pair of valid ones whose reward gap exceeds ``threshold`` (the core's select_pairs and write_feedback, which
    stores the SDFs and the JSONL); invalid samples (None) have no file to store and are left out."""
    from diffalign.inference.feedback import select_pairs, write_feedback
    from diffalign.modalities.molecule.rewards import pocket_contact
    from diffalign.rewards.prompts import prompt_key
    from diffalign.trainer.builders import build_adapter, build_policy
    adapter = build_adapter(cfg, [POCKET], torch.device("cpu"))
    policy = build_policy(cfg, adapter)
    items = [POCKET] * n
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    cond = adapter.encode_conditions(items, gens)
    with torch.no_grad():
        mols = adapter.decode(policy.sample(cond, generator=gens).x0, cond)
    rewards = pocket_contact(mols, items)
    valid = [i for i, m in enumerate(mols) if m is not None]
    pairs, _ = select_pairs([prompt_key(items[i]) for i in valid], rewards[valid], threshold=threshold)
    pairs = [(valid[w], valid[l]) for w, l in pairs]
    return write_feedback(str(out_dir), mols, items, rewards, pairs, save=adapter.save_sample), len(pairs)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["molecule_dpo_tiny", "molecule_e2po_tiny"])
def test_preference_methods_raise_pocket_contact(tmp_path, name):
    base = load_config(resolve_config_path(name), overrides=FAST + [f"output_dir={tmp_path / 'run'}"])
    path, count = ai_feedback_pairs(base, tmp_path / "feedback")
    assert count >= 8
    cfg = load_config(resolve_config_path(name), overrides=FAST + [f"output_dir={tmp_path / 'run'}", f"data.path={path}"])
    trainer = make_trainer(cfg)
    assert trainer.data.report.kept == count
    history = trainer.train()
    first = history[0]["eval_reward_initial"]
    assert history[-1]["eval_reward"] > first + 0.5, [first] + [h["eval_reward"] for h in history]
