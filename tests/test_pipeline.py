"""pipeline("rskip-translation", model=folder): batching, generation arguments, the saved tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, pipeline

import hf_rskip  # registers the task
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
    assert batched == one_by_one  # a list of inputs gives a flat list of dicts, as transformers 4's translation did
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


def test_several_sequences_per_input_keep_their_grouping(folder):
    translator = pipeline("rskip-translation", model=str(folder))
    sentences = ["a dog runs on the mat", "two men talk", "the small cat sits"]
    kw = dict(num_beams=3, num_return_sequences=2, max_new_tokens=4)
    one_by_one = [translator(s, **kw) for s in sentences]
    assert all(len(r) == 2 for r in one_by_one)
    for batch_size in (1, 2):
        assert translator(sentences, batch_size=batch_size, **kw) == one_by_one


def test_saved_folder_declares_the_pipeline_and_carries_its_code(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {"rskip-translation": {
        "impl": "pipeline.RSkipTranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}}
    assert (folder / "pipeline.py").read_text() == (Path(hf_rskip.__file__).parent / "pipeline.py").read_text()


@pytest.fixture(params=["rskip", "rskip_t5"])
def either_family(request, tmp_path):
    """A saved translation model folder of each family."""
    if request.param == "rskip":
        return request.getfixturevalue("folder")
    from hf_rskip import RSkipT5Config, RSkipT5ForConditionalGeneration

    tokenizer = word_tokenizer()
    config = RSkipT5Config.from_preset("tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id, d_model=32, d_kv=8, d_ff=48)
    model = RSkipT5ForConditionalGeneration(config).eval()
    folder = tmp_path / "t5"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_pipeline_from_a_saved_folder_without_the_package(either_family, tmp_path):
    """The Hub user's path: the folder alone, `trust_remote_code=True`, and `import hf_rskip` failing."""
    folder = either_family
    sentences = ["a dog runs on the mat", "two men talk", "the small cat sits"]
    expected = pipeline("rskip-translation", model=str(folder))(sentences, num_beams=2, max_new_tokens=5)
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["hf_rskip"] = None  # any `import hf_rskip` now raises ImportError
        from transformers import pipeline
        translator = pipeline("rskip-translation", model={str(folder)!r}, trust_remote_code=True)
        assert type(translator).__module__.startswith("transformers_modules"), type(translator).__module__
        assert type(translator.model).__module__.startswith("transformers_modules"), type(translator.model).__module__
        out = translator({sentences!r}, num_beams=2, max_new_tokens=5, batch_size=2)
        # saved again from there (say after fine-tuning), the folder still carries its pipeline
        resaved = {str(tmp_path / "resaved")!r}
        translator.model.save_pretrained(resaved)
        translator.tokenizer.save_pretrained(resaved)
        again = pipeline("rskip-translation", model=resaved, trust_remote_code=True)
        assert again({sentences!r}, num_beams=2, max_new_tokens=5) == out
        print("OUT" + json.dumps(out))
        """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.split("OUT", 1)[1])
    assert got == expected and len(got) == 3
