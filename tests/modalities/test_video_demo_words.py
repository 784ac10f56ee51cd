"""The video demo preset's motion words: new trainable rows of the frozen text encoder, the image words untouched."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign.data.shapes import all_captions  # noqa: E402
from diffalign.data.shapes_clips import clip_captions  # noqa: E402
from diffalign.modalities.image.demo_model import load_demo_model  # noqa: E402
from diffalign.modalities.video import demo  # noqa: E402


def _image_model():
    _, text_encoder, tokenizer, _, _ = load_demo_model()
    return text_encoder, tokenizer


def _encode(text_encoder, tokenizer, prompts):
    with torch.no_grad():
        return text_encoder(tokenizer(list(prompts))).last_hidden_state


def test_every_clip_caption_word_is_in_the_extended_vocabulary_and_image_ids_are_kept():
    text_encoder, tokenizer = _image_model()
    missing = sorted({w for c in clip_captions() for w in tokenizer.unknown_words(c)})
    assert missing == sorted(demo.MOTION_WORDS)  # exactly the words the image vocabulary lacks
    extended = demo.extend_vocabulary(tokenizer, text_encoder, demo.MOTION_WORDS)
    assert all(extended.vocab[w] == i for w, i in tokenizer.vocab.items())
    assert [extended.vocab[w] for w in demo.MOTION_WORDS] == list(range(22, 25))
    assert not [c for c in clip_captions() if extended.unknown_words(c)]
    assert text_encoder.config.vocab_size == 25


def test_image_captions_encode_bit_identically_and_fresh_rows_are_unk():
    text_encoder, tokenizer = _image_model()
    reference, ref_tok = _image_model()
    extended = demo.extend_vocabulary(tokenizer, text_encoder, demo.MOTION_WORDS)
    image_captions = list(all_captions())[:64] + [""]
    assert torch.equal(_encode(text_encoder, extended, image_captions), _encode(reference, ref_tok, image_captions))
    # fresh rows are copies of <unk>, so a moving caption encodes as the image model read it (its motion words unknown)
    moving = ["a red circle moving up", "two blue squares moving down", "a green triangle moving left"]
    assert torch.equal(_encode(text_encoder, extended, moving), _encode(reference, ref_tok, moving))


def test_only_the_new_rows_get_gradient():
    text_encoder, tokenizer = _image_model()
    extended = demo.extend_vocabulary(tokenizer, text_encoder, demo.MOTION_WORDS)
    text_encoder.requires_grad_(False)
    rows = demo.motion_word_rows(text_encoder).requires_grad_(True)
    table = text_encoder.get_input_embeddings()
    assert [n for n, p in text_encoder.named_parameters() if p.requires_grad] == \
        ["text_model.embeddings.token_embedding.extra"] and not table.base.requires_grad
    text_encoder(extended(["a red circle moving up"])).last_hidden_state.square().sum().backward()
    # "moving" and "up" were used, "down" was not
    assert rows.grad[0].abs().sum() > 0 and rows.grad[1].abs().sum() > 0 and rows.grad[2].abs().sum() == 0
    rows.grad = None
    text_encoder(extended(["a red circle"])).last_hidden_state.square().sum().backward()
    assert rows.grad is None or rows.grad.abs().sum() == 0


def test_motion_words_round_trip_through_the_motion_adapter_folder(tmp_path):
    unet, text_encoder, tokenizer, _, fresh = demo.demo_video_model(None)
    assert fresh and [tokenizer.vocab[w] for w in demo.MOTION_WORDS] == [22, 23, 24]
    trained = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        demo.motion_word_rows(text_encoder).copy_(trained)
    unet.save_motion_modules(str(tmp_path))
    path = demo.save_motion_words(str(tmp_path), demo.MOTION_WORDS, demo.motion_word_rows(text_encoder))
    assert os.path.basename(path) == demo.MOTION_WORDS_FILE
    words, rows = demo.load_motion_words(str(tmp_path))
    assert words == list(demo.MOTION_WORDS) and torch.equal(rows, trained)
    _, loaded_te, loaded_tok, _, fresh = demo.demo_video_model(str(tmp_path))
    assert not fresh and loaded_tok.vocab == tokenizer.vocab
    prompts = ["a red circle moving up", "a red circle moving down", "a red circle"]
    got = _encode(loaded_te, loaded_tok, prompts)
    torch.testing.assert_close(got, _encode(text_encoder, tokenizer, prompts), rtol=0, atol=0)
    assert not torch.equal(got[0], got[1])  # with their own rows, up and down no longer encode the same
    # the image words still encode as the image demo model does
    reference, ref_tok = _image_model()
    assert torch.equal(got[2], _encode(reference, ref_tok, prompts[2:])[0])


def test_a_folder_without_motion_words_keeps_the_image_vocabulary(tmp_path):
    unet, *_ = demo.demo_video_model(None)
    unet.save_motion_modules(str(tmp_path))
    assert demo.load_motion_words(str(tmp_path)) is None
    _, text_encoder, tokenizer, _, _ = demo.demo_video_model(str(tmp_path))
    assert "moving" not in tokenizer.vocab and isinstance(text_encoder.get_input_embeddings(), torch.nn.Embedding)


def test_bad_motion_word_inputs_are_refused(tmp_path):
    text_encoder, tokenizer = _image_model()
    with pytest.raises(ValueError, match=r"\['left'\] are already in the vocabulary"):
        demo.extend_vocabulary(tokenizer, text_encoder, ["moving", "left"])
    with pytest.raises(ValueError, match=r"need rows of shape \(2, 64\), got \(2, 8\)"):
        demo.extend_vocabulary(tokenizer, text_encoder, ["moving", "up"], torch.zeros(2, 8))
    with pytest.raises(ValueError, match="no extended vocabulary"):
        demo.motion_word_rows(text_encoder)
    with pytest.raises(ValueError, match="same width"):
        demo.ExtendedTokenEmbedding(torch.zeros(4, 8), torch.zeros(1, 6))
    from safetensors.torch import save_file
    save_file({"embeddings": torch.zeros(2, 64)}, str(tmp_path / demo.MOTION_WORDS_FILE))
    with pytest.raises(ValueError, match="no 'words' metadata"):
        demo.load_motion_words(str(tmp_path))
    save_file({"embeddings": torch.zeros(2, 64)}, str(tmp_path / demo.MOTION_WORDS_FILE), metadata={"words": '["up"]'})
    with pytest.raises(ValueError, match=r"1 words but embeddings of shape \(2, 64\)"):
        demo.load_motion_words(str(tmp_path))
