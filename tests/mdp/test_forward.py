"""The training-grid forward process against the step rules' and closed forms."""
import torch

from diffalign.mdp import make_step_rule
from diffalign.mdp.forward import ForwardProcess
from diffalign.modalities.toy import make_scheduler


def test_alpha_schedule_matches_step_rule_at_its_timesteps():
    sched = make_scheduler("ddim")
    fp, rule = ForwardProcess(sched), make_step_rule("ddim", sched, 10)
    assert fp.num_train_timesteps == 1000 and not fp.flow
    x0, noise = torch.randn(10, 3), torch.randn(10, 3)
    steps = torch.arange(10)
    t = rule.timesteps.long()
    torch.testing.assert_close(fp.add_noise(x0, noise, t), rule.add_noise(x0, noise, steps))
    torch.testing.assert_close(fp.target(x0, noise, t), rule.training_target(x0, noise, None, steps))
    torch.testing.assert_close(fp.model_timesteps(t, x0), t)
    a = sched.alphas_cumprod[999].double()
    torch.testing.assert_close(fp.add_noise(x0.double(), noise.double(), torch.tensor([999] * 10)),
                               a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double())


def test_v_prediction_target():
    from diffusers import DDIMScheduler
    sched = DDIMScheduler(prediction_type="v_prediction")
    fp = ForwardProcess(sched)
    x0, noise, t = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 10, 500, 999])
    v = sched.get_velocity(x0, noise, t)  # diffusers' own definition
    torch.testing.assert_close(fp.target(x0, noise, t), v, rtol=1e-5, atol=1e-6)


def test_flow_matching_uses_the_training_sigmas_even_after_set_timesteps():
    sched = make_scheduler("flow")
    sched.set_timesteps(4)  # must not shrink the training grid
    fp = ForwardProcess(sched)
    assert fp.flow and fp.prediction_type == "flow" and fp.sigmas.shape == (1000,)
    i = torch.tensor([0, 500, 999])
    s = fp.sigmas[i].float()[:, None]
    x0, noise = torch.randn(3, 2), torch.randn(3, 2)
    torch.testing.assert_close(fp.add_noise(x0, noise, i), (1 - s) * x0 + s * noise)
    torch.testing.assert_close(fp.target(x0, noise, i), noise - x0)
    torch.testing.assert_close(fp.model_timesteps(i, x0), s[:, 0] * 1000)
    assert 0 < float(fp.sigmas.min()) and float(fp.sigmas.max()) <= 1
