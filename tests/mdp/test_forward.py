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


def test_vp_and_edm_schedules_noise_stored_samples_in_closed_form():
    from diffalign.mdp import EDMSchedule, VPSchedule
    vp = VPSchedule.cosine(50, prediction_type="v_prediction", model_times=torch.arange(50) / 50.0)
    fp = ForwardProcess(vp)
    x0, eps, idx = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 7, 49])
    a = vp.alphas_cumprod[idx][:, None]
    assert fp.num_train_timesteps == 50
    assert torch.allclose(fp.add_noise(x0, eps, idx), a.sqrt() * x0 + (1 - a).sqrt() * eps)
    assert torch.allclose(fp.target(x0, eps, idx), a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert torch.allclose(fp.model_timesteps(idx, x0), idx / 50.0)
    edm = EDMSchedule(sigmas=[10.0, 3.0, 0.5])
    fe = ForwardProcess(edm)
    idx = torch.tensor([0, 2, 1])
    s = torch.tensor([10.0, 0.5, 3.0], dtype=torch.float64)[:, None]
    assert fe.num_train_timesteps == 3
    assert torch.allclose(fe.add_noise(x0, eps, idx), x0 + s * eps)
    assert torch.equal(fe.target(x0, eps, idx), x0)  # EDM's denoiser predicts the clean sample
    assert torch.allclose(fe.model_timesteps(idx, x0), (s[:, 0].log() / 4).float())
