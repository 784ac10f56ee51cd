"""run_method (what the CLI and the demo call) for every method, on the toy and on a random demo-model-shaped
pixel-space UNet with the word tokenizer (the shipped demo model's architecture)."""
import pytest
import torch

from diffalign.inference import DEFAULT_BUDGETS, METHODS, make_reward, run_method
from diffalign.inference.methods import plain_evaluations

from .conftest import toy_reward


@pytest.fixture(scope="module")
def demo_policy(tmp_path_factory):
    from diffalign.demo.model import build_demo_model, save_demo_model, task_vocabulary
    from diffalign.mdp import DiffusionPolicy, make_step_rule
    from diffalign.modalities.image import ImageAdapter, ImageOptions
    folder = str(tmp_path_factory.mktemp("demo_model"))
    save_demo_model(folder, *build_demo_model(task_vocabulary(), seed=0))
    adapter = ImageAdapter.from_options(ImageOptions(model=folder, lora_rank=0))
    return DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 4, eta=1.0), 3.0)


def test_every_method_on_the_toy_counts_its_compute(toy):
    prompts, seeds = ["cat", "dog"], [0, 1]
    plain = run_method(toy, "plain", prompts, seeds, progress=False)
    assert plain.evaluations == plain_evaluations(toy, 2) == toy.rule.num_steps * 2 * 2
    base = toy_reward(plain.decoded, prompts)
    for method in ("best_of_n", "rejection", "noise_opt"):
        out = run_method(toy, method, prompts, seeds, toy_reward, threshold=float(base.max()) + 1, progress=False,
                         options={"regularizer": "norm"} if method == "noise_opt" else None)
        assert out.decoded.shape == plain.decoded.shape and len(out.info) == 2
        assert out.evaluations > plain.evaluations
        assert toy_reward(out.decoded, prompts).sum() >= base.sum() - 1e-5, method
    with pytest.raises(ValueError, match="unknown method"):
        run_method(toy, "dpo", prompts, seeds)
    with pytest.raises(ValueError, match="needs a reward"):
        run_method(toy, "best_of_n", prompts, seeds)
    assert set(DEFAULT_BUDGETS) == set(METHODS)


def test_methods_run_on_the_pixel_space_demo_architecture(demo_policy):
    from diffalign.rewards.compositional import compositional_reward
    prompts, seeds = ["a red circle left of a blue square", "two green triangles"], [0, 1]
    sur = make_reward("shapes_surrogate", differentiable=True)
    no = run_method(demo_policy, "noise_opt", prompts, seeds, compositional_reward, 2, grad_reward=sur,
                    progress=False)
    assert no.decoded.shape == (2, 3, 32, 32) and all(abs(i["shell_ratio"] - 1) < 0.1 for i in no.info)
    assert all(i["objective_reward"] >= i["objective_plain_reward"] for i in no.info)
    po = run_method(demo_policy, "prompt_opt", prompts, seeds, compositional_reward, 3, progress=False)
    tok = demo_policy.adapter.tokenizer
    assert all(not tok.unknown_words(i["best_prompt"]) for i in po.info)  # only rewrites the model can read
    ae = run_method(demo_policy, "attend_excite", prompts, seeds, compositional_reward, 1,
                    subjects=[["circle", "square"], ["triangles"]], progress=False)
    assert ae.info[1]["subjects"] == ["triangles"] and ae.decoded.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="differentiable"):
        run_method(demo_policy, "noise_opt", prompts, seeds, _non_differentiable, 1, progress=False)


def _non_differentiable(images, prompts):
    return torch.zeros(len(prompts))


_non_differentiable.differentiable = False
