import pytest
import torch

from diffalign.inference import LMRewriter, PromptOptConfig, optimize_prompt, rewrite_candidates, sample_images

from .conftest import mean_red


def test_rewrite_candidates_templates_and_emphasis():
    out = rewrite_candidates("a red circle", templates=("{prompt}, {prompt}",))
    assert out[0] == "a red circle" and len(out) == len(set(out))
    assert {"a red circle, a red circle", "a red red circle", "a red circle circle", "red a red circle",
            "circle a red circle"} <= set(out)
    assert "a a red circle" not in out  # function words are never emphasised
    with pytest.raises(ValueError, match="placeholder"):
        rewrite_candidates("a cat", templates=("no slot",))


def test_prompt_opt_returns_the_best_rewrite_and_its_score(image):
    seen = []

    def reward(images, prompts):
        seen.extend(prompts)
        return -mean_red(images, prompts)  # "not red": the plain prompt is not the best candidate here

    seeds = [4, 5]
    res = optimize_prompt(image, "a cat", reward, seeds, PromptOptConfig(samples_per_prompt=2, max_candidates=6),
                          progress=False)
    assert set(seen) == {"a cat"}                       # every candidate is judged against the user's prompt
    assert len(res.scores) == 6 and list(res.scores)[0] == "a cat"
    assert res.best_score == max(res.scores.values()) > res.original_score
    plain = sample_images(image, ["a cat"] * 2, seeds)   # the original's score is plain sampling at the seeds
    assert abs(res.original_score + float(mean_red(plain.decoded, ["a cat"] * 2).mean())) < 1e-6
    again = sample_images(image, [res.best_prompt] * 2, seeds)
    assert abs(res.best_score + float(mean_red(again.decoded, ["a cat"] * 2).mean())) < 1e-6
    assert res.evaluations == 6 * plain.evaluations


def test_prompt_opt_on_the_toy_keeps_only_encodable_candidates(toy):
    res = optimize_prompt(toy, "cat", lambda x, p: -x.pow(2).sum(1), [0, 1], PromptOptConfig(samples_per_prompt=2),
                          progress=False)
    assert list(res.scores) == ["cat"] and res.best_prompt == "cat"  # the toy knows no rewrite of "cat"


def _tiny_gpt2(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    words = "rewrite the image prompt to be more precise . : a red blue circle square cat dog bright big small".split()
    vocab = {"[UNK]": 0, "<|endoftext|>": 1, "\n": 2}
    vocab.update({w: i + 3 for i, w in enumerate(dict.fromkeys(w.lower() for w in words))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                               bos_token_id=1, eos_token_id=1)).save_pretrained(path)


def test_lm_rewriter_from_a_local_tiny_gpt2(tmp_path, image):
    _tiny_gpt2(tmp_path / "lm")
    rewriter = LMRewriter(str(tmp_path / "lm"), num_candidates=3, max_new_tokens=5, seed=1)
    first = rewriter("a red cat")
    assert 1 <= len(first) <= 3 and all(isinstance(t, str) and t for t in first)
    assert rewriter("a red cat") == first                     # seeded: the same rewrites every call
    res = optimize_prompt(image, "a cat", mean_red, [0], PromptOptConfig(samples_per_prompt=1, max_candidates=3,
                                                                          templates=(), emphasis=False),
                          rewriter=rewriter, progress=False)
    assert list(res.scores)[1:] == list(dict.fromkeys(t for t in rewriter("a cat") if t != "a cat"))[:2]
    with pytest.raises(ValueError, match="not a folder"):
        LMRewriter(str(tmp_path / "missing"))
