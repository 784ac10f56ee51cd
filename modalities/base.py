"""The modality adapter contract: everything the trainer asks of a modality, and nothing more.

The trainer, the algorithms and the step rules never know what a sample *is*. They see a state
tensor ``x`` with a batch dimension, a :data:`Conditions` mapping, and rewards. An adapter owns the
rest: the denoiser, how prompt items become conditions, the initial noise, constraints, decoding, the
schedule the step rule reads, the trainable parameters and the frozen reference.

Conditions are a plain ``dict[str, Tensor]`` whose tensors all have the batch first. That one rule
lets generic code slice, concatenate and gather conditions (:func:`index_conditions`,
:func:`cat_conditions`) for any modality, and lets guidance batch its branches without knowing what
they hold.

What each hook is for, and which modality in this package uses it:

- ``encode_conditions(items, generator)``: prompt items (a text or a mapping; see
  diffalign.rewards.prompts) -> conditions; the generator draws what an item leaves random (toy_points
  draws a set's size). Rewards receive the items beside the decoded samples.
- ``initial_noise`` / ``project_noise`` / ``project``: x_T, the subspace every noise draw is mapped
  into, and the constraint applied after every step. toy_points keeps point sets centre-of-mass free
  with padded points at zero.
- ``logprob_mask`` / ``logprob_dims``: which elements log-probs, KLs and denoising errors count, and
  how many degrees of freedom a sample has; step log-probs are then densities in that subspace
  (toy_points: the points present, 3 (n - 1) dimensions).
- ``guidance_branches`` / ``combine_guidance``: the condition sets guidance evaluates as one batch and
  how their outputs combine; classifier-free guidance by default, three branches in toy_dual.
- ``build_generator`` / ``render``: a modality whose samples come from a differentiable generator trained
  against the frozen model (SDS with ``algorithm.generator: modality``): threed's radiance field and renderer;
  the toy's learnable point exercises the hook.
- ``denoise``, ``decode`` / ``decode_with_grad``, ``encode`` (offline data: x0 and conditions from a
  stored sample), ``load_sample`` / ``save_sample`` (stored samples), ``rewards``, ``sample_grid``, ``metrics``
  (the adapter's own numbers per epoch: molecule decode validity), and the training-state methods.
- ``decode`` may give a list instead of a tensor batch (molecules), with None for an invalid sample (nothing
  decoded); rewards score it (a penalty), and stored preference data keeps it as its model state (x0 and
  conditions, diffalign.data.StoredState), since ``save_sample`` has nothing to write.

Modalities in this package: image (modalities/image: x = VAE latents, text conditions, UNet or SD3
transformer, VAE decode), toy (modalities/toy: x in R^d, closed-form rewards) and its variants
toy_points and toy_dual, and threed (modalities/threed: a nerfstudio radiance field rendered into the sample space
of a frozen image prior). Models trained outside the denoiser (a generator distilled against a frozen
diffusion critic) belong to algorithms with the "generator" data path; the adapter then serves as the
critic through ``denoise`` and its schedule, and may own the generator itself (``build_generator`` / ``render``).
"""
from __future__ import annotations

import abc
import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

Conditions = Dict[str, torch.Tensor]
#: None, one generator for the batch, or one generator per sample
Generators = Union[None, torch.Generator, Sequence[torch.Generator]]

__all__ = ["Conditions", "Generators", "item_generators", "ModalityAdapter", "PeftOrFrozenReference", "index_conditions",
           "cat_conditions", "batch_size_of", "unwrap"]


def batch_size_of(cond: Conditions) -> int:
    """The common batch size of a conditions dict (error if the tensors disagree)."""
    sizes = {k: v.shape[0] for k, v in cond.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"conditions disagree on the batch size: {sizes}")
    if not sizes:
        raise ValueError("conditions are empty: an adapter must give at least one batch-first tensor")
    return next(iter(sizes.values()))


def item_generators(generator: Generators, n: int) -> List[Optional[torch.Generator]]:
    """One generator (or None) per item: a list is checked against ``n``, a single generator is shared
    (its draws then follow the item order), None stays None."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} items")
        return list(generator)
    return [generator] * n


def index_conditions(cond: Conditions, index) -> Conditions:
    """Select samples (an index tensor, a slice or a bool mask) from every tensor."""
    return {k: v[index] for k, v in cond.items()}


def cat_conditions(parts: Sequence[Conditions]) -> Conditions:
    """Concatenate conditions along the batch dimension (same keys in every part)."""
    keys = set(parts[0])
    for p in parts[1:]:
        if set(p) != keys:
            raise ValueError(f"cannot concatenate conditions with keys {sorted(keys)} and {sorted(p)}")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class ModalityAdapter(abc.ABC):
    """What a modality provides. Subclasses implement the abstract methods; the rest have defaults.

    Attributes a subclass sets:
      denoiser: the torch module holding every trainable parameter; ``denoise`` must call it through
        this attribute, because the trainer replaces it by accelerate's wrapper (DDP, FSDP) so that
        gradients are synchronised. Use :func:`unwrap` to reach the bare module (e.g. for peft).
      scheduler: what the step rule reads: a diffusers scheduler (DDIM / DDPM / FlowMatchEulerDiscrete)
        or one of diffalign.schedules' (VP betas, EDM sigmas), which a modality may import.
      default_step_rule: the step rule rollouts use unless configured (see diffalign.mdp.STEP_RULES).
    """

    denoiser: torch.nn.Module
    scheduler: Any
    default_step_rule: str = "ddim"

    # ---- conditions and noise -------------------------------------------------------------------
    @abc.abstractmethod
    def encode_conditions(self, items: Sequence[Any], generator: Generators = None) -> Conditions:
        """Prompt items -> batch-first tensors.

        An item is a text or a mapping (text plus file paths, arrays, ids: see
        diffalign.rewards.prompts). ``generator`` (None, one generator, or one per item) draws whatever a
        condition leaves random (an atom count, a start state, a camera), so that a seeded run draws the
        same conditions; with one generator per item a sample's draw does not depend on its batch."""

    def unconditional(self, cond: Conditions) -> Conditions:
        """The unconditional branch for classifier-free guidance (same keys and batch size)."""
        raise NotImplementedError(f"{type(self).__name__} has no unconditional branch: use guidance_scale = 1")

    def guidance_branches(self, cond: Conditions) -> List[Conditions]:
        """The condition sets whose outputs guidance combines; they run as ONE batch, in this order.
        Default: classifier-free guidance, [unconditional, conditional]."""
        return [self.unconditional(cond), cond]

    def combine_guidance(self, outputs: Sequence[torch.Tensor], scale: float) -> torch.Tensor:
        """The guided output from the branches' outputs (in guidance_branches' order).
        Default: uncond + scale * (cond - uncond). Dual guidance (text and image) or masked guidance are
        adapter choices: override both hooks."""
        uncond, text = outputs
        return uncond + scale * (text - uncond)

    @abc.abstractmethod
    def initial_noise(self, cond: Conditions, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T for each condition (its shape may depend on the condition), already in the constrained
        subspace (``project_noise`` holds for it)."""

    def project_noise(self, noise: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Map standard normal noise (B, ...) into the subspace samples live in; every draw of the
        framework (step noise, re-noising for denoising losses) goes through it. Default: identity.
        An E(3) model removes the centre of mass of the atoms present and zeroes padded ones."""
        return noise

    def logprob_mask(self, cond: Conditions, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-element weights of x (x's shape, or broadcastable with the batch first) that log-probs,
        KLs and denoising losses reduce over; None: every element. Padded atoms or pinned (observed)
        planning states get 0, so they count nowhere."""
        return None

    def logprob_dims(self, cond: Conditions, x: torch.Tensor) -> Optional[torch.Tensor]:
        """(B,) degrees of freedom of each sample when they are fewer than its masked elements (a
        centre-of-mass-free set of n points in R^3 has 3(n - 1)); None: the masked element count.
        Step log-probs are then densities in that subspace (see DiffusionPolicy)."""
        return None

    # ---- the denoiser --------------------------------------------------------------------------
    @abc.abstractmethod
    def denoise(self, x: torch.Tensor, timesteps: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Model output at x (B, ...) and model timesteps (B,), in the scheduler's prediction type."""

    def project(self, x: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Constraint applied after every step (inpainting, centre-of-mass removal). Default: none.
        Return ``x`` itself (not a copy) when nothing changes: the chain then skips re-scoring."""
        return x

    # ---- a differentiable generator (score distillation's ``generator: modality``) ------------------------------
    def build_generator(self, seed: int) -> torch.nn.Module:
        """A fresh trainable generator (all its randomness from ``seed``) whose renders live in this modality's sample
        space: a radiance field for text-to-3D. The trainer optimises, checkpoints and saves it; the denoiser is then
        a frozen critic."""
        raise NotImplementedError(f"{type(self).__name__} has no generator: use algorithm.generator 'point'")

    def render(self, generator: torch.nn.Module, cond: Conditions) -> torch.Tensor:
        """Renders x (B, ...) of ``generator`` (what build_generator made; possibly wrapped by accelerate, so call
        it, do not reach into it) for the conditions (a camera each), with a graph to its parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no generator to render")

    # ---- what rewards see -------------------------------------------------------------------------
    @abc.abstractmethod
    def decode(self, x0: torch.Tensor, cond: Conditions) -> Any:
        """x0 -> what reward functions consume (images in [0, 1], frames, molecules, ...): a tensor batch, or a
        list in batch order with None for a sample that has no decoded form (an invalid molecule)."""

    def decode_with_grad(self, x0: torch.Tensor, cond: Conditions) -> Any:
        """``decode`` keeping the autograd graph (direct reward fine-tuning, noise optimisation).
        Default: ``decode`` itself, or the function it wraps when it is decorated with torch.no_grad."""
        import inspect
        return inspect.unwrap(type(self).decode)(self, x0, cond)

    def load_sample(self, ref: Any) -> Any:
        """One stored sample (a path, bytes, an array) -> what ``encode`` takes. Default:
        :func:`diffalign.data.load_sample` (PIL images, float tensors); a modality whose samples are not single
        images (a video file, a frame folder) reads them itself."""
        from diffalign.data.types import load_sample
        return load_sample(ref)

    def save_sample(self, sample: Any, folder: str, name: str) -> str:
        """One decoded sample -> a file (or folder) in ``folder`` named after ``name`` that ``load_sample`` reads
        back and a person can open; returns its name relative to ``folder``. Default:
        :func:`diffalign.data.save_sample` (a PNG for an image (C, H, W), else an exact .npy)."""
        from diffalign.data.types import save_sample
        return save_sample(sample, folder, name)

    def encode(self, samples: Sequence[Any], items: Sequence[Any]) -> Tuple[torch.Tensor, Conditions]:
        """Stored samples and their prompt items -> (x0 (B, ...), conditions), for offline data
        (preference pairs, binary feedback). The conditions come from the item AND the stored sample
        where it holds some (a molecule's atom count is its mask).

        ``samples`` are what ``load_sample`` returns (by default PIL images or float tensors).
        The inverse of ``decode`` up to its information loss (e.g. VAE encode for images).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot encode stored samples (no offline data path)")

    def rewards(self) -> Dict[str, Any]:
        """Rewards that make sense for this modality, by name: ``(decoded, items) -> Tensor[B]``."""
        return {}

    def sample_grid(self, decoded: Any) -> torch.Tensor | None:
        """An image (3, H, W) in [0, 1] showing decoded samples, for tensorboard; None if not visual."""
        return None

    def metrics(self) -> Dict[str, float]:
        """Numbers the adapter gathered since the previous call (the share of decoded molecules that are valid, by
        failure reason), after which it counts afresh. The trainer calls it once per epoch and logs what it
        returns with the epoch's metrics (metrics.jsonl and tensorboard), averaged over processes, so return
        shares or per-process counts, and keys that do not clash with the trainer's (a "group/" prefix).
        Default: none."""
        return {}

    # ---- training state --------------------------------------------------------------------------
    @abc.abstractmethod
    def trainable_parameters(self) -> List[torch.nn.Parameter]:
        """Parameters the optimiser updates (LoRA weights or the full denoiser)."""

    @abc.abstractmethod
    def reference_mode(self) -> contextlib.AbstractContextManager:
        """Context in which ``denoise`` runs the frozen reference (adapters disabled or a frozen copy)."""

    @abc.abstractmethod
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """The trainable weights, for checkpoints (restored exactly by load_trainable_state_dict)."""

    @abc.abstractmethod
    def load_trainable_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore what trainable_state_dict returned."""

    def save_pretrained(self, directory: str) -> None:
        """Export the trained weights in the ecosystem's format (default: a safetensors file)."""
        import os

        from safetensors.torch import save_file
        os.makedirs(directory, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()},
                  os.path.join(directory, "trainable.safetensors"))



class PeftOrFrozenReference:
    """The frozen reference of an adapter whose denoiser trains either by peft LoRA or fully.

    LoRA: the reference is the same module with its adapters disabled (no second copy in memory). Full
    training: ``_frozen_copy`` holds a copy of the denoiser made before training, in the adapter's dtype,
    while the trained module stays in float32. Subclasses set ``denoiser``, ``dtype``, ``_frozen_copy``
    (None for LoRA) and ``_in_reference = False``, and run the model that :meth:`_active_denoiser` returns.
    """

    denoiser: torch.nn.Module
    dtype: torch.dtype
    _frozen_copy: Optional[torch.nn.Module] = None
    _in_reference: bool = False

    def _active_denoiser(self) -> Tuple[torch.nn.Module, torch.dtype]:
        """The module ``denoise`` runs now and the dtype to run it in (a fully trained module: float32)."""
        if self._in_reference and self._frozen_copy is not None:
            return self._frozen_copy, self.dtype
        return self.denoiser, self.dtype if self._frozen_copy is None else torch.float32

    @contextlib.contextmanager
    def reference_mode(self):
        lora = self._frozen_copy is None
        model = unwrap(self.denoiser)
        previous, self._in_reference = self._in_reference, True
        if lora:
            model.disable_adapters()
        try:
            yield
        finally:
            if lora:
                model.enable_adapters()
            self._in_reference = previous

    def trainable_parameters(self) -> List[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / accelerate wrapper (or the module itself)."""
    while hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
        module = module.module
    return module
