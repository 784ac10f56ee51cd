"""The modality adapter contract: everything the trainer asks of a modality, and nothing more.

The trainer, the algorithms and the step rules never know what a sample *is*. They see a state
tensor ``x`` with a batch dimension, a :data:`Conditions` mapping, and rewards. An adapter owns the
rest: the denoiser, how conditions are encoded, the initial noise, constraints, decoding, the
scheduler the step rule reads, the trainable parameters and the frozen reference.

Conditions are a plain ``dict[str, Tensor]`` whose tensors all have the batch first. That one rule
lets generic code slice, concatenate and gather conditions (:func:`index_conditions`,
:func:`cat_conditions`) for any modality, and lets classifier-free guidance batch the conditional
and unconditional branches without knowing what they hold.

How the six modalities fit (x is the state the step rule moves; decode gives what rewards judge):

- image (modalities/image): x = VAE latents (B, C, h, w). Conditions = text embeddings (+ SDXL's
  pooled embeddings and time ids); ``unconditional`` returns the empty-prompt embeddings for CFG.
  denoise = UNet (epsilon / v) or SD3 transformer (flow velocity). decode = VAE decode to images.
- video: x = latents (B, C, F, h, w): the frame axis is just another non-batch dim, so log-probs
  and KLs reduce over it unchanged. decode -> frames (B, F, C, H, W); a per-frame reward is reduced
  over frames inside the reward function (mean, min, or a temporal-consistency term).
- image editing: the input image is extra conditioning: ``encode_conditions`` puts its VAE latents
  under e.g. ``"image_latents"`` and ``denoise`` concatenates them channel-wise (InstructPix2Pix);
  ``unconditional`` drops the text (and, for dual guidance, the image) branch.
- text-to-3D: there is no sampling chain. The policy is a differentiable generator (a NeRF and its
  renderer); the diffusion model is a frozen critic. The adapter still provides ``denoise``,
  ``unconditional`` and the scheduler (to noise renders and score them, SDS) and ``decode`` for
  renders; the generator and score distillation live in an algorithm whose data path is
  "differentiable generator", so ``initial_noise``/``project`` are not used there.
- molecules: x = atom coordinates and atom-type features padded to the largest atom count,
  (B, N_max, 3 + K). Conditions hold the protein-pocket features and an atom mask (B, N_max), so
  variable atom counts are a condition. ``initial_noise`` draws zero-centre-of-mass coordinates for
  the atoms present; ``project`` removes the centre of mass and zeroes padded atoms after every step
  (the E(3)-equivariant denoiser assumes both). decode -> molecules for docking / QED rewards.
- planning (Diffuser-style): x = state-action trajectories (B, horizon, S + A). Conditioning is by
  inpainting: conditions hold ``observed_mask`` and ``observed_values`` and ``project`` writes the
  observed states back after every step; guidance is usually off (``guidance_scale = 1``).
  decode -> trajectories for a return / constraint reward.
- toy (modalities/toy): x in R^d, an MLP denoiser, closed-form rewards; exercises every code path.
"""
from __future__ import annotations

import abc
import contextlib
from typing import Any, Dict, List, Sequence

import torch

Conditions = Dict[str, torch.Tensor]

__all__ = ["Conditions", "ModalityAdapter", "index_conditions", "cat_conditions", "batch_size_of", "unwrap"]


def batch_size_of(cond: Conditions) -> int:
    """The common batch size of a conditions dict (error if the tensors disagree)."""
    sizes = {k: v.shape[0] for k, v in cond.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"conditions disagree on the batch size: {sizes}")
    if not sizes:
        raise ValueError("conditions are empty: an adapter must give at least one batch-first tensor")
    return next(iter(sizes.values()))


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
      scheduler: a diffusers scheduler (DDIM/DDPM/FlowMatchEulerDiscrete) the step rule reads.
      default_step_rule: "ddim" | "ddpm" | "flow_sde" (what rollouts use unless configured).
    """

    denoiser: torch.nn.Module
    scheduler: Any
    default_step_rule: str = "ddim"

    # ---- conditions and noise -------------------------------------------------------------------
    @abc.abstractmethod
    def encode_conditions(self, prompts: Sequence[Any]) -> Conditions:
        """Prompts (text, pockets, observed states, input images...) -> batch-first tensors."""

    def unconditional(self, cond: Conditions) -> Conditions:
        """The unconditional branch for classifier-free guidance (same keys and batch size)."""
        raise NotImplementedError(f"{type(self).__name__} has no unconditional branch: use guidance_scale = 1")

    @abc.abstractmethod
    def initial_noise(self, cond: Conditions, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T for each condition (its shape may depend on the condition)."""

    # ---- the denoiser --------------------------------------------------------------------------
    @abc.abstractmethod
    def denoise(self, x: torch.Tensor, timesteps: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Model output at x (B, ...) and model timesteps (B,), in the scheduler's prediction type."""

    def project(self, x: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Constraint applied after every step (inpainting, centre-of-mass removal). Default: none."""
        return x

    # ---- what rewards see -------------------------------------------------------------------------
    @abc.abstractmethod
    def decode(self, x0: torch.Tensor, cond: Conditions) -> Any:
        """x0 -> what reward functions consume (images in [0, 1], frames, molecules, ...)."""

    def encode(self, samples: Sequence[Any], cond: Conditions) -> torch.Tensor:
        """Stored samples -> x0 (B, ...) for offline data (preference pairs, binary feedback).

        ``samples`` are what :func:`diffalign.data.load_sample` returns: PIL images or float tensors.
        The inverse of ``decode`` up to its information loss (e.g. VAE encode for images).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot encode stored samples (no offline data path)")

    def rewards(self) -> Dict[str, Any]:
        """Rewards that make sense for this modality, by name: ``(decoded, prompts) -> Tensor[B]``."""
        return {}

    def sample_grid(self, decoded: Any) -> torch.Tensor | None:
        """An image (3, H, W) in [0, 1] showing decoded samples, for tensorboard; None if not visual."""
        return None

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



def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / accelerate wrapper (or the module itself)."""
    while hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
        module = module.module
    return module
