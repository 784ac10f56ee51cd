"""Tiny random diffusers / transformers components and pipelines for the pretrained-path tests (nothing
downloads): the image, video and editing adapters load them from a folder as a user's ``modality.options.model``
loads a checkpoint, and compare against the diffusers pipelines' own samplers."""
import torch

RES = 16          # pixels; the two-block VAEs below downsample once, so latents are 8 x 8
LATENT = RES // 2
MAX_TOKENS = 16   # the tokenizers' model_max_length = the text encoders' max_position_embeddings


def tiny_tokenizer():
    """A CLIP tokenizer whose vocabulary is the byte-level alphabet (each symbol alone and word-final) and no
    merges: every word tokenizes to its characters. Ids: 0 = bos, 1 = eos (= pad), then the symbols."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


VOCAB = 2 + 2 * 256


def clip_config(**kw):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=MAX_TOKENS, bos_token_id=0,
                          eos_token_id=1, pad_token_id=1, **kw)


def tiny_vae(**kw):
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=RES, **kw)


def tiny_unet(cross_attention_dim, **kw):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=cross_attention_dim,
                                attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **kw)


# SD 1.5's shipped scheduler settings (its scheduler_config.json)
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                   steps_offset=1)


def tiny_t5():
    """A T5 encoder (1 layer, d_model 64) and a unigram tokenizer over single lower-case letters and digits."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    config = T5Config(vocab_size=len(vocab), d_model=64, d_ff=64, d_kv=16, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config), tokenizer




def save_pipelines(builders, tmp_path_factory):
    """name -> (folder, pipeline): each ``builders[name]()`` built under seed 0, put in eval mode (built modules
    start in training mode: T5's dropout) and saved with ``save_pretrained``."""
    out = {}
    for name, build in builders.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            pipe = build()
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.eval()
        folder = str(tmp_path_factory.mktemp(name))
        pipe.save_pretrained(folder)
        out[name] = (folder, pipe)
    return out
