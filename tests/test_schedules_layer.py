"""The VP / EDM schedule arithmetic sits below the modalities (diffalign/schedules.py), so an adapter may build its
noise schedule from it, while diffalign.mdp keeps its public names."""
import torch

from tests.test_layering import LAYER_OF, import_graph


def test_schedules_sit_below_modalities_and_import_nothing_from_diffalign():
    assert LAYER_OF["diffalign.schedules"] > LAYER_OF["diffalign.modalities"] > LAYER_OF["diffalign.mdp"]
    assert not [b for (a, b) in import_graph() if a == "diffalign.schedules"]


def test_mdp_keeps_its_public_names():
    import diffalign.mdp
    import diffalign.mdp.schedules
    import diffalign.schedules
    for name in ("VPSchedule", "EDMSchedule"):
        assert getattr(diffalign.mdp, name) is getattr(diffalign.schedules, name)
        assert getattr(diffalign.mdp.schedules, name) is getattr(diffalign.schedules, name)


def test_a_schedule_from_the_low_layer_is_what_the_mdp_forward_process_reads():
    """A schedule built where a modality would build it is what the mdp's forward process reads:
    the marginal x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps against the closed form in float64."""
    from diffalign.mdp.forward import ForwardProcess
    from diffalign.schedules import VPSchedule
    schedule = VPSchedule.linear(50)
    forward = ForwardProcess(schedule)
    x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0, 10, 49])
    a = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 50, dtype=torch.float64), 0)[t][:, None]
    assert torch.allclose(forward.add_noise(x0, eps, t), a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-12)
