"""Tiny random versions of the model rewards, saved in their published layouts (for tests and offline demos).

Each ``tiny_*(directory)`` builds the reward's real architecture with tiny dimensions and random weights,
saves it with ``save_pretrained`` (the published checkpoint layout + ``diffalign_reward.json``) and returns the
directory, which ``load_reward(directory)`` reloads. Nothing is downloaded: the CLIP tokenizer is open_clip's
bundled BPE vocabulary converted to transformers' format, the BERT tokenizer a small word list.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

TINY_IMAGE_SIZE = 32
BERT_WORDS = ["a", "an", "the", "of", "on", "in", "photo", "painting", "cat", "dog", "red", "blue", "green",
              "car", "tree", "house", "sky", "astronaut", "riding", "horse", "apple", "table", "with", "and"]


def clip_tokenizer():
    """transformers CLIPTokenizer with the OpenAI CLIP BPE vocabulary bundled with open_clip (ids match open_clip)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer
    st = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in st.encoder.items()}
    merges = [tuple(m) for m in sorted(st.bpe_ranks, key=st.bpe_ranks.get)]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_clip_model(seed: int = 0, projection_dim: int = 16, image_size: int = TINY_IMAGE_SIZE):
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=image_size, patch_size=8),
                     projection_dim=projection_dim)
    return CLIPModel(cfg).eval()


def tiny_clip_score(directory: str, seed: int = 0, **kwargs) -> str:
    from diffalign.rewards.clip_score import CLIPScore
    CLIPScore(tiny_clip_model(seed), clip_tokenizer(), **kwargs).save_pretrained(directory)
    return directory


def tiny_pickscore(directory: str, seed: int = 0) -> str:  # PickScore: a CLIP-H in the same transformers layout
    from diffalign.rewards.pickscore import PickScore
    PickScore(tiny_clip_model(seed), clip_tokenizer()).save_pretrained(directory)
    return directory


def tiny_aesthetic(directory: str, seed: int = 0) -> str:
    from diffalign.rewards.aesthetic import LaionAesthetic, ScoreMLP
    clip = tiny_clip_model(seed)
    head = ScoreMLP(16, (32, 16, 8, 4))
    LaionAesthetic(clip, head).save_pretrained(directory)
    return directory


TINY_OPEN_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": TINY_IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 8,
                                 "patch_size": 8},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}


def tiny_hps(directory: str, version: str = "v2.1", seed: int = 0) -> str:
    from diffalign.rewards.hps import HPSv2, create_open_clip
    torch.manual_seed(seed)
    model, tokenizer = create_open_clip("diffalign-tiny-ViT", TINY_OPEN_CLIP)
    HPSv2(model.eval(), tokenizer, version, "diffalign-tiny-ViT", TINY_OPEN_CLIP).save_pretrained(directory)
    return directory


TINY_BLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        image_size=TINY_IMAGE_SIZE, patch_size=8)


def bert_tokenizer(directory: str):
    """A BERT (uncased WordPiece) tokenizer over ``BERT_WORDS``, saved as ``directory/vocab.txt``."""
    from transformers import BertTokenizer
    os.makedirs(directory, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + BERT_WORDS + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,!?")
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(dict.fromkeys(vocab)) + "\n")
    return BertTokenizer.from_pretrained(directory)


def tiny_image_reward(directory: str, seed: int = 0, vocab_dir: Optional[str] = None) -> str:
    from diffalign.rewards.image_reward import ImageReward, init_tokenizer
    vocab_dir = vocab_dir or directory
    bert_tokenizer(vocab_dir)
    tok = init_tokenizer(vocab_dir, local_files_only=True)
    med = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=64, hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.1,
               attention_probs_dropout_prob=0.1, pad_token_id=0, add_cross_attention=True, model_type="bert")
    torch.manual_seed(seed)
    ImageReward(med, tok, vision=TINY_BLIP_VISION).save_pretrained(directory)
    return directory
