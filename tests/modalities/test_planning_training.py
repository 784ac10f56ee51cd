"""The planning configs through the trainer: DDPO and GRPO raise the executed forward velocity of the planner's
rollouts, DPO on executed-preference pairs raises that of fixed-seed samples."""
import json

import numpy as np
import pytest
import torch

from diffalign.config import load_config, resolve_config_path
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.planning import PlanningAdapter, forward_velocity
from diffalign.trainer import make_trainer

CONFIGS = ["planning_ddpo_tiny", "planning_grpo_tiny", "planning_dpo_tiny"]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_planning_configs_validate(name, tmp_path):
    cfg = load_config(resolve_config_path(name), overrides=[f"output_dir={tmp_path}"])
    assert cfg.modality.name == "planning" and cfg.reward.name == "planning_forward_velocity"


def test_a_misspelt_option_names_its_field(tmp_path):
    with pytest.raises(Exception, match="modality.options.horizon"):
        load_config(resolve_config_path("planning_ddpo_tiny"),
                    overrides=[f"output_dir={tmp_path}", "modality.options.horizon=15", "modality.options.architecture=unet1d"])


def rewards_by_epoch(history):
    return [h["reward_mean"] for h in history]


@pytest.mark.parametrize("name", ["planning_ddpo_tiny", "planning_grpo_tiny"])
def test_online_rl_raises_the_executed_forward_velocity(name, tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(resolve_config_path(name), overrides=[f"output_dir={tmp_path}"])
    r = rewards_by_epoch(make_trainer(cfg).train())
    print(name, "reward_mean by epoch", [round(v, 3) for v in r])
    assert len(r) == 16
    assert np.mean(r[-4:]) > np.mean(r[:4]) + 0.2, r  # m/s, on the mean of 64 executed plans per epoch


def write_pairs(folder, n_pairs=96):
    """Pairs of the base planner's own plans (the config's tiny DiT), the winner the faster one when executed."""
    adapter = PlanningAdapter.tiny("Hopper-v5", horizon=16, architecture="dit", init_seed=0)
    policy = DiffusionPolicy(adapter, make_step_rule("ddpm", adapter.scheduler, 5))
    items = [{"text": "hop forward", "start_seed": 100 + i // 2} for i in range(2 * n_pairs)]  # a pair shares its start
    cond = adapter.encode_conditions(items)
    with torch.no_grad():
        plans = adapter.decode(policy.sample(cond, generator=[torch.Generator().manual_seed(i) for i in range(len(items))]).x0, cond)
    speed = forward_velocity(plans)
    lines = []
    for k in range(n_pairs):
        a, b = 2 * k, 2 * k + 1
        win, lose = (a, b) if speed[a] > speed[b] else (b, a)
        for i in (win, lose):
            np.save(folder / f"plan_{i}.npy", plans[i].numpy())
        lines.append(json.dumps({"prompt": "hop forward", "chosen": f"plan_{win}.npy", "rejected": f"plan_{lose}.npy"}))
    (folder / "prefs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "prefs.jsonl"


def test_dpo_on_executed_preferences_raises_the_forward_velocity(tmp_path):
    torch.set_num_threads(1)
    (tmp_path / "data").mkdir()
    prefs = write_pairs(tmp_path / "data")
    cfg = load_config(resolve_config_path("planning_dpo_tiny"),
                      overrides=[f"output_dir={tmp_path / 'run'}", f"data.path={prefs}"])
    history = make_trainer(cfg).train()
    evals = [h["eval_reward"] for h in history if "eval_reward" in h]
    print("eval_reward by epoch", evals)
    assert evals[-1] > evals[0] + 0.05, evals


def test_a_kl_penalty_skips_the_pinned_state_and_the_deterministic_last_step(tmp_path):
    """GRPO / DPOK with beta > 0 on the planner: the KL counts only the entries the log-prob counts (the inpainted
    state has std 0 noise and weight 0) and no deterministic step (DDPM's last, std 0); it is the float64 closed form
    sum (mean - ref)^2 / (2 std^2) over the kept entries, per kept dimension."""
    torch.set_num_threads(1)
    cfg = load_config(resolve_config_path("planning_grpo_tiny"),
                      overrides=[f"output_dir={tmp_path}", "algorithm.beta=0.04", "epochs=1"])
    trainer = make_trainer(cfg)
    metrics = trainer.train()[-1]
    assert np.isfinite(metrics["kl"]) and metrics["kl"] >= 0
    policy, adapter = trainer.policy, trainer.policy.adapter
    cond = adapter.encode_conditions(cfg.prompts.list[:3], [torch.Generator().manual_seed(i) for i in range(3)])
    traj = policy.sample(cond, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    x_t, x_prev = traj.latents[:, 0], traj.latents[:, 1]
    steps = torch.zeros(3, dtype=torch.long)
    out = policy.transition(x_t, steps, cond, prev_sample=x_prev)
    shifted = out._replace(mean=out.mean + 0.01 * torch.arange(out.mean.numel()).reshape(out.mean.shape) % 0.07)
    got = policy.step_kl(out, shifted, x_t, cond)
    keep = adapter.logprob_mask(cond, x_t).expand(x_t.shape).double()
    d2 = (out.mean.double() - shifted.mean.double()) ** 2 / (2 * out.std.double() ** 2)
    want = (d2 * keep).flatten(1).sum(1) / keep.flatten(1).sum(1)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-7)
    last = policy.transition(traj.latents[:, -2], torch.full((3,), traj.num_steps - 1), cond,
                             prev_sample=traj.latents[:, -1])
    assert bool((last.std == 0).all()) and torch.equal(policy.step_kl(last, shifted, x_t, cond), torch.zeros(3))
