"""Attend-and-Excite (Chefer et al., SIGGRAPH 2023, arXiv:2301.13826; survey 4.3, "Attention Control").

Text-to-image models often drop a subject of a multi-subject prompt ("catastrophic neglect"). A&E
reads the cross-attention maps of the chosen subject tokens during sampling and, in the first steps,
moves the latents so that every subject gets a strong activation somewhere:

    loss(z_t) = max over subjects s of (1 - max over pixels of G * A_s(z_t))
    z_t <- z_t - alpha_t * grad loss(z_t)

where A_s is the subject token's cross-attention map (averaged over heads and over the cross-attention
layers at one spatial resolution, 16x16 for SD as in the paper), after a softmax over the prompt's text
tokens (the start token excluded, logits scaled by 100, as the paper does) and G a small Gaussian
smoothing (3x3, sigma 0.5). alpha_t = scale_factor * sqrt(1 - t/(2 T)) decays over the altered steps
(the paper: scale factor 20, steps in the first half); at the chosen refinement steps the update is
repeated until the weakest subject's maximum reaches a threshold (the paper's "iterative latent
refinement").

Implementation: diffusers attention processors, not the deprecated pipeline. :func:`attention_store`
puts a :class:`StoringCrossAttnProcessor` on every cross-attention layer (``attn2``) of the UNet the
image adapter holds (plain, SDXL or LoRA'd by peft: the processor calls the layer's own
``to_q``/``to_k``/``to_v``, so LoRA stays in the path) and restores the previous processors after.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffalign.inference.sampler import EvalCounter, count_evaluations, draw_noise, encode_items, sample_chain
from diffalign.mdp import DiffusionPolicy

__all__ = ["AttentionStore", "StoringCrossAttnProcessor", "attention_store", "subject_token_indices",
           "subject_attention_maps", "attend_excite_loss", "AttendExciteConfig", "AttendExciteResult",
           "attend_and_excite"]


class AttentionStore:
    """Cross-attention probabilities (averaged over heads) recorded by the processors while ``active``,
    grouped by their spatial size (h, w), each (B, h*w, T)."""

    def __init__(self):
        self.active = False
        self.latent_hw: Optional[Tuple[int, int]] = None
        self.maps: Dict[Tuple[int, int], List[torch.Tensor]] = {}

    def reset(self) -> None:
        self.maps = {}

    def record(self, probs: torch.Tensor, batch: int, heads: int) -> None:
        if not self.active:
            return
        pixels, tokens = probs.shape[1], probs.shape[2]
        H, W = self.latent_hw or (int(math.isqrt(pixels)),) * 2
        factor = math.sqrt(H * W / pixels)  # how far this layer is downsampled from the latents
        hw = (int(round(H / factor)), int(round(W / factor)))
        if hw[0] * hw[1] != pixels:
            raise ValueError(f"cannot place {pixels} attention pixels on the {H}x{W} latent grid")
        self.maps.setdefault(hw, []).append(probs.reshape(batch, heads, pixels, tokens).mean(dim=1))

    def sizes(self) -> List[Tuple[int, int]]:
        return sorted(self.maps)

    def aggregate(self, resolution: int = 16) -> torch.Tensor:
        """(B, T, h, w): the mean over layers at the recorded size nearest to ``resolution``."""
        if not self.maps:
            raise ValueError("no cross-attention was recorded: is the denoiser a UNet with cross-attention "
                             "(attn2) layers, and was the store active during its forward?")
        hw = min(self.maps, key=lambda s: (abs(s[0] - resolution), -s[0]))
        stacked = torch.stack(self.maps[hw]).mean(dim=0)  # (B, h*w, T)
        return stacked.transpose(1, 2).reshape(stacked.shape[0], stacked.shape[2], *hw)


class StoringCrossAttnProcessor:
    """Plain (non-fused) attention that also hands its softmaxed probabilities to a store."""

    def __init__(self, store: AttentionStore):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_layout = hidden_states.ndim == 4
        if image_layout:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.reshape(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch = context.shape[0]
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, pixels, tokens)
        self.store.record(probs, batch, attn.heads)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if image_layout:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _unet(adapter):
    from diffalign.modalities.base import unwrap
    model = unwrap(getattr(adapter, "denoiser", None)) if getattr(adapter, "denoiser", None) is not None else None
    if model is None or not hasattr(model, "attn_processors") or \
            not any(".attn2." in name for name in model.attn_processors):
        raise ValueError("Attend-and-Excite needs a UNet with cross-attention (attn2) layers, such as the image "
                         f"modality's SD/SDXL UNets; got {type(model).__name__}")
    return model


@contextlib.contextmanager
def attention_store(adapter) -> Iterator[AttentionStore]:
    """Install storing processors on the adapter's UNet cross-attention layers; restore on exit."""
    unet = _unet(adapter)
    previous = dict(unet.attn_processors)
    store = AttentionStore()
    processor = StoringCrossAttnProcessor(store)
    unet.set_attn_processor({name: processor if ".attn2." in name else p for name, p in previous.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(previous)


# ---- tokens ------------------------------------------------------------------------------------------
def _tokenizer(adapter):
    tok = getattr(adapter, "tokenizer", None)
    if tok is None and getattr(adapter, "pipeline", None) is not None:
        tok = getattr(adapter.pipeline, "tokenizer", None)
    if tok is None:
        raise ValueError("Attend-and-Excite needs the adapter's tokenizer to locate subject tokens")
    return tok


def _ids(tok, text: str, specials: bool) -> List[int]:
    """Token ids of ``text`` up to its end token (with start/end tokens when ``specials``).

    Two tokenizer contracts: the project's own (the tiny preset's CharTokenizer, the demo model's
    WordTokenizer: ``tok(prompts) -> LongTensor (B, max_length)`` with ``bos``/``eos``/``pad`` ids) and
    transformers tokenizers (``tok(text, add_special_tokens=...)["input_ids"]``).
    """
    if all(hasattr(tok, a) for a in ("bos", "eos", "pad")) and not hasattr(tok, "convert_tokens_to_ids"):
        row = tok([text])[0].tolist()
        row = row[: row.index(tok.eos) + 1] if tok.eos in row else [i for i in row if i != tok.pad]
        return row if specials else [i for i in row if i not in (tok.bos, tok.eos, tok.pad)]
    out = tok(text, add_special_tokens=specials)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def subject_token_indices(adapter, prompt: str, word: str) -> Tuple[List[int], int]:
    """(positions of ``word``'s tokens in the encoded prompt, number of tokens before padding).

    A word may be several tokens (the tiny preset's tokenizer is per character; BPE splits rare words):
    its map is then the mean of theirs. The first occurrence is taken. ValueError if the word is not
    in the prompt's tokens.
    """
    tok = _tokenizer(adapter)
    ids = _ids(tok, prompt, True)
    candidates = [_ids(tok, word, False)]
    if hasattr(tok, "convert_tokens_to_ids"):
        candidates.append(_ids(tok, " " + word, False))  # byte-level BPE marks a leading space
    for sub in candidates:
        n = len(sub)
        if n == 0:
            continue
        for start in range(len(ids) - n + 1):
            if ids[start:start + n] == sub:
                return list(range(start, start + n)), len(ids)
    raise ValueError(f"Attend-and-Excite: subject word {word!r} is not among the tokens of prompt {prompt!r}")


def _gaussian_kernel(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    r = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def subject_attention_maps(maps: torch.Tensor, token_sets: Sequence[Sequence[Tuple[List[int], int]]],
                           temperature: float = 100.0, kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """(B, S, h, w) smoothed maps of S subjects per sample from aggregated maps (B, T, h, w); S is the
    largest number of subjects of a sample (fewer are padded by repeating the last).

    ``token_sets[b][s]`` = (token positions, prompt length) from :func:`subject_token_indices`. Per
    sample, the text tokens 1 .. length-2 (no start/end token) are re-softmaxed with their logits
    scaled by ``temperature``, the subject's tokens averaged, then smoothed.
    """
    out = []
    for b, subjects in enumerate(token_sets):
        rows = []
        for positions, length in subjects:
            text = maps[b, 1:max(length - 1, 2)]  # (T_text, h, w)
            text = torch.softmax(text * temperature, dim=0)
            rows.append(text[[p - 1 for p in positions if 1 <= p < max(length - 1, 2)]].mean(dim=0))
        out.append(rows)
    # samples may name different numbers of subjects: repeat a sample's last one up to S (the loss
    # takes a max over subjects, so a repeat changes nothing)
    S = max(len(rows) for rows in out)
    subj = torch.stack([torch.stack(rows + [rows[-1]] * (S - len(rows))) for rows in out])  # (B, S, h, w)
    if kernel_size > 1:
        B, S, h, w = subj.shape
        pad = kernel_size // 2
        flat = F.pad(subj.reshape(B * S, 1, h, w), (pad,) * 4, mode="reflect")
        subj = F.conv2d(flat, _gaussian_kernel(kernel_size, sigma, flat)).reshape(B, S, h, w)
    return subj


def attend_excite_loss(subject_maps: torch.Tensor) -> torch.Tensor:
    """(B,) max over subjects of (1 - max over pixels of the subject's map)."""
    peak = subject_maps.flatten(2).max(dim=2).values  # (B, S)
    return (1 - peak).max(dim=1).values


# ---- the sampler ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class AttendExciteConfig:
    scale_factor: float = 20.0        # alpha_t = scale_factor * sqrt(1 - t / (2 T))
    max_step_fraction: float = 0.5    # alter the latents in the first half of the steps (the paper: 25 of 50)
    resolution: int = 16              # the attention maps' side (16 for SD as in the paper; nearest available)
    temperature: float = 100.0
    kernel_size: int = 3
    sigma: float = 0.5
    # iterative refinement: {step fraction: target peak}; at that step, repeat the update until the
    # weakest subject's peak reaches the target or max_refinement_steps (the paper: steps 0, 10, 20 of 50
    # with 0.05, 0.5, 0.8)
    refinement: Dict[float, float] = dataclasses.field(default_factory=lambda: {0.0: 0.05, 0.2: 0.5, 0.4: 0.8})
    max_refinement_steps: int = 5
    batch_size: int = 8

    def __post_init__(self):
        if self.scale_factor < 0 or not 0 <= self.max_step_fraction <= 1 or self.max_refinement_steps < 0:
            raise ValueError("attend_excite needs scale_factor >= 0, max_step_fraction in [0, 1], "
                             f"max_refinement_steps >= 0; got {self.scale_factor}, {self.max_step_fraction}, "
                             f"{self.max_refinement_steps}")


@dataclasses.dataclass
class AttendExciteResult:
    x0: torch.Tensor
    decoded: object
    prompts: List[str]
    seeds: List[int]
    subjects: List[List[str]]
    losses: torch.Tensor              # (altered steps, B): the A&E loss at each altered step, before its update
    final_losses: torch.Tensor        # (B,) the loss at the first unaltered step (after every update)
    evaluations: int
    grad_evaluations: int


def _cond_maps(policy: DiffusionPolicy, store: AttentionStore, x: torch.Tensor, i: int, cond, token_sets,
               config: AttendExciteConfig) -> torch.Tensor:
    """A&E loss (B,) at step i from one conditional forward (no guidance: the maps of the prompt)."""
    store.reset()
    store.active, store.latent_hw = True, tuple(x.shape[-2:])
    try:
        policy.adapter.denoise(x, policy.rule.model_timesteps(i, x), cond)
    finally:
        store.active = False
    maps = subject_attention_maps(store.aggregate(config.resolution), token_sets, config.temperature,
                                  config.kernel_size, config.sigma)
    store.reset()
    return attend_excite_loss(maps)


def attend_and_excite(policy: DiffusionPolicy, prompts: Sequence[str], subjects: Sequence[Sequence[str]],
                      seeds: Sequence[int], config: AttendExciteConfig = AttendExciteConfig(),
                      progress: bool = True) -> AttendExciteResult:
    """Sample ``prompts`` with A&E on the words ``subjects[b]`` of prompt b (same seeds, same chain as
    plain sampling; scale_factor 0 gives plain sampling exactly, losses still recorded)."""
    prompts, seeds = [str(p) for p in prompts], [int(s) for s in seeds]
    if not len(prompts) == len(seeds) == len(subjects):
        raise ValueError(f"{len(prompts)} prompts, {len(seeds)} seeds and {len(subjects)} subject lists")
    adapter = policy.adapter
    T = policy.rule.num_steps
    n_alter = int(math.floor(config.max_step_fraction * T + 1e-9))
    refine_at = {int(round(f * T)): target for f, target in config.refinement.items()}
    counter = EvalCounter()
    xs, decoded, losses, finals = [], [], [], []
    bar = tqdm(total=len(prompts), desc="attend-and-excite", disable=not progress, leave=False)
    with count_evaluations(adapter, counter), attention_store(adapter) as store:
        for start in range(0, len(prompts), config.batch_size):
            chunk = prompts[start:start + config.batch_size]
            token_sets = [[subject_token_indices(adapter, p, w) for w in subjects[start + j]]
                          for j, p in enumerate(chunk)]
            if any(not s for s in token_sets):
                raise ValueError("Attend-and-Excite needs at least one subject word per prompt")
            cond = encode_items(adapter, chunk, seeds[start:start + config.batch_size])
            x_T, noises = draw_noise(policy, cond, seeds[start:start + config.batch_size])
            chunk_losses: List[torch.Tensor] = []
            final: List[torch.Tensor] = []

            def excite(i: int, x: torch.Tensor) -> torch.Tensor:
                if i > n_alter:
                    return x
                with torch.enable_grad():
                    if i == n_alter:  # the first unaltered step: record the loss the updates reached
                        final.append(_cond_maps(policy, store, x, i, cond, token_sets, config).detach().cpu())
                        return x
                    alpha = config.scale_factor * math.sqrt(1 - i / (2 * T))
                    rounds = 1 + (config.max_refinement_steps if i in refine_at else 0)
                    for r in range(rounds):
                        z = x.detach().requires_grad_(True)
                        loss = _cond_maps(policy, store, z, i, cond, token_sets, config)
                        if r == 0:
                            chunk_losses.append(loss.detach().cpu())
                        elif bool(((1 - loss) >= refine_at[i]).all()):
                            break  # every sample's weakest subject reached the target peak
                        if alpha == 0:
                            break
                        (grad,) = torch.autograd.grad(loss.sum(), z)
                        x = (z - alpha * grad).detach()
                return x

            with torch.no_grad():
                x0 = sample_chain(policy, cond, x_T, noises, checkpoint=False, before_step=excite)
                xs.append(x0.cpu())
                decoded.append(adapter.decode(x0, cond).detach().cpu())
            if not final:  # every step was altered: there is no later step to measure at
                final.append(torch.full((len(chunk),), float("nan")))
            losses.append(torch.stack(chunk_losses) if chunk_losses else torch.zeros(0, len(chunk)))
            finals.append(final[0])
            bar.update(len(chunk))
    bar.close()
    return AttendExciteResult(torch.cat(xs), torch.cat(decoded), prompts, seeds, [list(s) for s in subjects],
                              torch.cat(losses, dim=1), torch.cat(finals), counter.evaluations,
                              counter.grad_evaluations)
