"""The shipped tiny text-to-image model: a pixel-space UNet, a tiny CLIP text encoder, a word tokenizer.

The model draws 32x32 RGB images of coloured shapes (diffalign.data.shapes). Nothing is a VAE: the
diffusion state is the image itself scaled to [-1, 1] (3 channels), which keeps the model at ~1.5M
parameters and lets the image modality adapter run every trainer algorithm on it on a CPU.

Folder layout (``save_demo_model`` / ``load_demo_model``; ``DEMO_MODEL_DIR`` is the shipped copy):

- ``unet/``          diffusers UNet2DConditionModel (config.json + diffusion_pytorch_model.safetensors)
- ``text_encoder/``  transformers CLIPTextModelWithProjection (config.json + model.safetensors)
- ``scheduler/``     diffusers DDIMScheduler config (v-prediction, cosine betas)
- ``tokenizer.json`` the word vocabulary (WordTokenizer)
- ``diffalign_demo.json``  marker + metadata: training command, seed, steps, wall time, measured accuracy
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import torch

import diffalign

# the weights ship with the diffalign package (diffalign/assets), wherever this modality package is installed
DEMO_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(diffalign.__file__)), "assets", "demo_model")
MARKER = "diffalign_demo.json"
RESOLUTION = 32

_SPECIALS = ("<bos>", "<pad>", "<eos>", "<unk>")


class WordTokenizer:
    """Whitespace word-level tokenizer over a fixed vocabulary (offline; saved as ``tokenizer.json``).

    ids: 0 = bos, 1 = pad, 2 = eos, 3 = unk, then the words. Same call contract as the tiny preset's
    CharTokenizer: ``tokenizer(prompts) -> LongTensor (B, max_length)``. Unknown words map to ``<unk>``
    (so any prompt can be encoded), and ``unknown_words`` lists them for callers that want to refuse.
    """

    bos, pad, eos, unk = 0, 1, 2, 3

    def __init__(self, words: Sequence[str], max_length: int = 12):
        words = [w for w in dict.fromkeys(words) if w not in _SPECIALS]
        self.vocab: Dict[str, int] = {w: i for i, w in enumerate(list(_SPECIALS) + words)}
        self.model_max_length = max_length

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @staticmethod
    def words_of(prompt: str) -> List[str]:
        return prompt.lower().split()

    def unknown_words(self, prompt: str) -> List[str]:
        return [w for w in self.words_of(prompt) if w not in self.vocab]

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = []
        for p in prompts:
            words = self.words_of(p)[: self.model_max_length - 2]
            ids = [self.bos] + [self.vocab.get(w, self.unk) for w in words] + [self.eos]
            rows.append(ids + [self.pad] * (self.model_max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    def save(self, path: str) -> None:
        words = sorted(self.vocab, key=self.vocab.get)[len(_SPECIALS):]
        with open(path, "w") as f:
            json.dump({"type": "word", "max_length": self.model_max_length, "words": words}, f, indent=1)

    @classmethod
    def load(cls, path: str) -> "WordTokenizer":
        with open(path) as f:
            data = json.load(f)
        if data.get("type") != "word" or not isinstance(data.get("words"), list):
            raise ValueError(f"{path}: not a diffalign word tokenizer file (needs type 'word' and a 'words' list)")
        return cls(data["words"], data.get("max_length", 12))


def task_vocabulary() -> List[str]:
    """Every word the shapes captions use (colours, shapes and their plurals, counts, relations)."""
    from diffalign.data import shapes
    return list(shapes.VOCAB)


def build_demo_model(words: Sequence[str], seed: int = 0):
    """(unet, text_encoder, tokenizer, scheduler) with random weights, seeded (for training)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizer = WordTokenizer(words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_cfg = CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=tokenizer.model_max_length, projection_dim=64,
                                  bos_token_id=WordTokenizer.bos, pad_token_id=WordTokenizer.pad,
                                  eos_token_id=WordTokenizer.eos)
        text_encoder = CLIPTextModelWithProjection(text_cfg)
        # 32 -> 16 -> 8; text cross-attention (and the self-attention that relates positions) at 8x8 only:
        # measured on 2 shared CPU cores, attention at 16x16 too made a training step 3-4x slower
        unet = UNet2DConditionModel(sample_size=RESOLUTION, in_channels=3, out_channels=3, layers_per_block=1,
                                    block_out_channels=(32, 64, 64), norm_num_groups=8, cross_attention_dim=64,
                                    attention_head_dim=8,
                                    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    # cosine betas suit small pixel-space images (Nichol & Dhariwal 2021); v-prediction samples cleanly in
    # few DDIM steps, which keeps rollouts cheap for the online algorithms
    # steps_offset 1 (as SD's): with 0 the last DDIM step runs at t = 0 where alpha_prev = alpha_t, so its
    # stochastic step has std exactly 0 and per-step log-probs / KLs (DDPO, GRPO, DPOK) are undefined
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    return unet, text_encoder, tokenizer, scheduler


def save_model_folder(directory: str, unet, text_encoder, tokenizer: WordTokenizer, scheduler,
                      metadata: Optional[dict], marker: str) -> None:
    """The shipped demo models' folder layout (unet/, text_encoder/, scheduler/, tokenizer.json, and a marker
    json holding the metadata), shared by the image and editing demo models."""
    os.makedirs(directory, exist_ok=True)
    unet.save_pretrained(os.path.join(directory, "unet"), safe_serialization=True)
    text_encoder.save_pretrained(os.path.join(directory, "text_encoder"), safe_serialization=True)
    scheduler.save_pretrained(os.path.join(directory, "scheduler"))
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, marker), "w") as f:
        json.dump(metadata or {}, f, indent=1)


def load_model_folder(directory: str, marker: str, what: str, script: str):
    """(unet, text_encoder, tokenizer, scheduler, metadata) from a folder saved by save_model_folder, in eval
    mode; ``what`` and ``script`` name the kind of folder and its training script in the error."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    if not os.path.isfile(os.path.join(os.path.expanduser(directory), marker)):
        raise ValueError(f"{directory!r} is not a diffalign {what} folder (no {marker}); train one with {script}")
    unet = UNet2DConditionModel.from_pretrained(os.path.join(directory, "unet"))
    text_encoder = CLIPTextModelWithProjection.from_pretrained(os.path.join(directory, "text_encoder"))
    scheduler = DDIMScheduler.from_pretrained(os.path.join(directory, "scheduler"))
    tokenizer = WordTokenizer.load(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, marker)) as f:
        metadata = json.load(f)
    return unet.eval(), text_encoder.eval(), tokenizer, scheduler, metadata


def save_demo_model(directory: str, unet, text_encoder, tokenizer: WordTokenizer, scheduler,
                    metadata: Optional[dict] = None) -> None:
    save_model_folder(directory, unet, text_encoder, tokenizer, scheduler, metadata, MARKER)


def is_demo_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(path), MARKER))


def resolve_demo_path(model: str) -> Optional[str]:
    """``"demo"`` -> the shipped folder; a folder holding the marker file -> itself; else None."""
    if model == "demo":
        return DEMO_MODEL_DIR
    path = os.path.expanduser(model)
    return path if os.path.isdir(path) and is_demo_model_dir(path) else None


def load_demo_model(directory: str = DEMO_MODEL_DIR):
    """(unet, text_encoder, tokenizer, scheduler, metadata) from a saved folder (offline)."""
    return load_model_folder(directory, MARKER, "demo model", "scripts/train_demo_model.py")


def demo_metadata(directory: str = DEMO_MODEL_DIR) -> dict:
    with open(os.path.join(directory, MARKER)) as f:
        return json.load(f)
