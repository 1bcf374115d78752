"""pipeline("rskip-translation", model=folder): batching, generation arguments, the saved tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, pipeline

import hf_rskip  # noqa: F401  (registers the task)
from hf_rskip import RSkipForConditionalGeneration, RSkipTranslationPipeline
from tests.conftest import tiny_text_config

WORDS = "a dog cat runs sits on the red mat big small house two men talk".split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture
def folder(tmp_path):
    tokenizer = word_tokenizer()
    config = tiny_text_config(vocab_size=len(tokenizer))
    model = RSkipForConditionalGeneration(config).eval()
    with torch.no_grad():  # bias towards "dog" then eos so outputs are non-empty and vary with max_new_tokens
        model.final_logits_bias[0, 4] = 4.0
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


def test_pipeline_translates_batched_like_unbatched(folder):
    translator = pipeline("rskip-translation", model=str(folder))
    assert isinstance(translator, RSkipTranslationPipeline)
    sentences = ["a dog runs on the mat", "two men talk", "the small cat sits"]
    one_by_one = [translator(s, num_beams=2, max_new_tokens=6)[0] for s in sentences]
    batched = translator(sentences, num_beams=2, max_new_tokens=6, batch_size=3)
    assert [b[0] for b in batched] == one_by_one
    assert all(set(r) == {"translation_text"} and isinstance(r["translation_text"], str) for r in one_by_one)
    assert any(r["translation_text"] for r in one_by_one)


def test_generation_arguments_pass_through(folder):
    translator = pipeline("rskip-translation", model=str(folder))
    short = translator("a dog runs", max_new_tokens=1, min_new_tokens=1)[0]["translation_text"]
    long = translator("a dog runs", max_new_tokens=5, min_new_tokens=5)[0]["translation_text"]
    assert len(short.split()) == 1 and len(long.split()) == 5


def test_rejects_non_text(folder):
    translator = pipeline("rskip-translation", model=str(folder))
    with pytest.raises(TypeError, match="str"):
        translator(123)
