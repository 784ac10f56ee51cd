"""The ``demo`` preset: the shipped pixel-space image demo model plus an AnimateDiff motion adapter.

The image demo model (modalities/image/demo_model.py: a 32x32 UNet2DConditionModel over RGB pixels, a tiny
CLIP text encoder, a word tokenizer, a v-prediction DDIM scheduler) becomes a ``UNetMotionModel``: its layers
run on every frame, and one motion module per resnet attends across frames. The image layers stay frozen,
as AnimateDiff trains only its motion modules.

The motion adapter comes from a folder (``MotionAdapter.save_pretrained`` / ``VideoAdapter.save_pretrained``
after full training of the motion modules) or is freshly initialised with every motion module's output
projection zeroed, as AnimateDiff initialises them: each module is then the identity (its residual), and the
video model is the image model applied frame by frame until training moves it.

The image demo's vocabulary has no word for motion ("moving", "up", "down": a caption's unknown words all map to
``<unk>``, so "moving up" and "moving down" would encode the same). The video preset appends those words to the
tokenizer (after every image word, so no image word changes its id) and gives each a NEW row of the frozen text
encoder's token table (:class:`ExtendedTokenEmbedding`); the rows train with the motion modules and are saved next
to them as ``motion_words.safetensors``. The image rows are left untouched, so a caption of image words encodes
bit-identically to the image demo model.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

# 2 heads (the demo UNet's narrowest block has 32 channels); 8 frames by default, room for 32
MOTION_HEADS = 2
MAX_FRAMES = 32
# the clip captions' words the image vocabulary lacks (diffalign.data.shapes_clips: "moving" + a direction)
MOTION_WORDS = ("moving", "up", "down")
MOTION_WORDS_FILE = "motion_words.safetensors"


class ExtendedTokenEmbedding(torch.nn.Module):
    """A token table of frozen ``base`` rows (a buffer) followed by trainable ``extra`` rows (a parameter):
    only the new words can learn, and the old words' rows are the very same tensor values."""

    def __init__(self, base: torch.Tensor, extra: torch.Tensor):
        super().__init__()
        if base.ndim != 2 or extra.ndim != 2 or base.shape[1] != extra.shape[1]:
            raise ValueError(f"ExtendedTokenEmbedding: base {tuple(base.shape)} and extra {tuple(extra.shape)} "
                             "must be (rows, width) tables of the same width")
        self.register_buffer("base", base.detach().clone())
        self.extra = torch.nn.Parameter(extra.detach().clone())

    @property
    def weight(self) -> torch.Tensor:  # nn.Embedding's attribute, for callers that read the table
        return torch.cat([self.base, self.extra])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


def extend_vocabulary(tokenizer, text_encoder, words: Sequence[str], rows: Optional[torch.Tensor] = None):
    """A WordTokenizer with ``words`` appended (every old id kept) and ``text_encoder`` given their embedding rows,
    in place: ``rows`` (len(words), width), or copies of the ``<unk>`` row (so a fresh extension encodes every
    caption exactly as before: the new words were ``<unk>``). Returns the new tokenizer."""
    from diffalign.modalities.image.demo_model import WordTokenizer
    old = sorted(tokenizer.vocab, key=tokenizer.vocab.get)
    clash = [w for w in words if w in tokenizer.vocab]
    if clash:
        raise ValueError(f"extend_vocabulary: {clash} are already in the vocabulary")
    table = text_encoder.get_input_embeddings()
    base = table.weight.detach()
    if rows is None:
        rows = base[WordTokenizer.unk].repeat(len(words), 1)
    if tuple(rows.shape) != (len(words), base.shape[1]):
        raise ValueError(f"extend_vocabulary: {len(words)} words need rows of shape ({len(words)}, {base.shape[1]}), "
                         f"got {tuple(rows.shape)}")
    text_encoder.set_input_embeddings(ExtendedTokenEmbedding(base, rows.to(base.dtype)))
    text_encoder.config.vocab_size = base.shape[0] + len(words)
    return WordTokenizer(old + list(words), tokenizer.model_max_length)  # the specials are re-added first, as before


def motion_word_rows(text_encoder) -> torch.Tensor:
    """The trained rows of the motion words (the ``extra`` rows of an extended text encoder)."""
    table = text_encoder.get_input_embeddings()
    if not isinstance(table, ExtendedTokenEmbedding):
        raise ValueError("motion_word_rows: the text encoder has no extended vocabulary (see extend_vocabulary)")
    return table.extra


def save_motion_words(directory: str, words: Sequence[str], rows: torch.Tensor) -> str:
    """``motion_words.safetensors`` in ``directory``: the rows (tensor ``embeddings``) and their words (metadata)."""
    from safetensors.torch import save_file
    path = os.path.join(directory, MOTION_WORDS_FILE)
    save_file({"embeddings": rows.detach().float().contiguous()}, path, metadata={"words": json.dumps(list(words))})
    return path


def load_motion_words(directory: str):
    """(words, rows) saved by :func:`save_motion_words`, or None when the folder has none (older motion weights)."""
    from safetensors import safe_open
    path = os.path.join(directory, MOTION_WORDS_FILE)
    if not os.path.isfile(path):
        return None
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if "words" not in meta:
            raise ValueError(f"{path}: no 'words' metadata (write it with save_motion_words)")
        words, rows = json.loads(meta["words"]), f.get_tensor("embeddings")
    if rows.ndim != 2 or rows.shape[0] != len(words):
        raise ValueError(f"{path}: {len(words)} words but embeddings of shape {tuple(rows.shape)}")
    return words, rows


def fresh_motion_adapter(block_out_channels, layers_per_block: int, seed: int = 0):
    """A MotionAdapter for a UNet of these channels, seeded, its modules' output projections zeroed."""
    from diffusers import MotionAdapter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = MotionAdapter(block_out_channels=tuple(block_out_channels), motion_layers_per_block=layers_per_block,
                                motion_num_attention_heads=MOTION_HEADS, motion_norm_num_groups=8,
                                motion_max_seq_length=MAX_FRAMES, use_motion_mid_block=False)
    zero_motion_outputs(adapter)
    return adapter


def zero_motion_outputs(module: torch.nn.Module) -> int:
    """Zero the output projection of every motion module (AnimateDiff's zero initialisation); returns how many."""
    n = 0
    for name, child in module.named_modules():
        if name.endswith("proj_out") and "motion_modules" in name.split("."):
            torch.nn.init.zeros_(child.weight)
            torch.nn.init.zeros_(child.bias)
            n += 1
    return n


def demo_video_model(motion_adapter: Optional[str] = None, seed: int = 0, num_frames: int = 8):
    """(UNetMotionModel, text_encoder, tokenizer, scheduler, fresh) from the shipped image demo model;
    ``fresh`` says the motion adapter was initialised here rather than loaded from ``motion_adapter``.
    The vocabulary gains the motion words: their rows from the folder's ``motion_words.safetensors``, or ``<unk>``
    copies for a fresh adapter (to train); a folder without the file keeps the image vocabulary."""
    from diffusers import MotionAdapter, UNetMotionModel
    from diffalign.modalities.image.demo_model import load_demo_model
    unet, text_encoder, tokenizer, scheduler, _ = load_demo_model()
    if motion_adapter is not None:
        adapter = MotionAdapter.from_pretrained(motion_adapter)
        saved = load_motion_words(motion_adapter)
        if saved is not None:
            tokenizer = extend_vocabulary(tokenizer, text_encoder, *saved)
    else:
        adapter = fresh_motion_adapter(unet.config.block_out_channels, unet.config.layers_per_block, seed)
        tokenizer = extend_vocabulary(tokenizer, text_encoder, [w for w in MOTION_WORDS if w not in tokenizer.vocab])
    if num_frames > adapter.config.motion_max_seq_length:
        raise ValueError(f"config key 'modality.options.num_frames': the motion adapter's position table holds "
                         f"{adapter.config.motion_max_seq_length} frames, got {num_frames}")
    return UNetMotionModel.from_unet2d(unet, adapter).eval(), text_encoder, tokenizer, scheduler, motion_adapter is None
