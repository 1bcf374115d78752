"""Tests of hf_rskip.data: loaders and their errors, recipes, tokenizer, token batches, the built-in task."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import datasets
import pytest
from torch.utils.data import DataLoader

from hf_rskip.models.configuration_rskip import TEXT_PRESETS
from hf_rskip.data import (
    DATASET_RECIPES,
    DataError,
    TokenBatchSampler,
    builtin_translation_task,
    clean_pairs,
    load_parallel_file,
    load_recipe,
    load_translation_datasets,
    recipe_hparams,
    reference_translate,
    special_token_ids,
    token_lengths,
    tokenize_pairs,
    train_tokenizer,
)

from hf_rskip.data.recipes import shared_data_dir

SHARED_DATA = shared_data_dir()


def write(path: Path, content: str | bytes) -> Path:
    raw = content.encode("utf-8") if isinstance(content, str) else content
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_jsonl(path: Path, records: list) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ----------------------------------------------------------------------------------------------- loading


def test_prefix_plain_and_gz(tmp_path):
    write(tmp_path / "train.en", "Hello world\nA  second line \r\n")
    write(tmp_path / "train.de.gz", "Hallo Welt\nEine zweite Zeile\n")
    rows = load_parallel_file(str(tmp_path / "train"), "en", "de")
    # text is kept as is (apart from the line end); clean_pairs strips
    assert rows == [{"en": "Hello world", "de": "Hallo Welt"}, {"en": "A  second line ", "de": "Eine zweite Zeile"}]


def test_prefix_splits_lines_on_newline_only(tmp_path):
    # U+2028 and U+0085 occur in real corpora; str.splitlines would split there and misalign the sides.
    write(tmp_path / "x.en", "one\u2028still one\ntwo\x85still two\n")
    write(tmp_path / "x.de", "eins\nzwei\n")
    rows = load_parallel_file(str(tmp_path / "x"), "en", "de")
    assert [r["de"] for r in rows] == ["eins", "zwei"]
    assert rows[0]["en"] == "one\u2028still one"


def test_prefix_missing_file_names_paths_tried(tmp_path):
    write(tmp_path / "p.en", "a\n")
    with pytest.raises(DataError) as error:
        load_parallel_file(str(tmp_path / "p"), "en", "de")
    assert str(tmp_path / "p.de") in str(error.value) and str(tmp_path / "p.de.gz") in str(error.value)


def test_prefix_line_count_mismatch_names_both_files_and_counts(tmp_path):
    write(tmp_path / "p.en", "a\nb\nc\n")
    write(tmp_path / "p.de.gz", "a\nb\n")
    with pytest.raises(DataError) as error:
        load_parallel_file(str(tmp_path / "p"), "en", "de")
    message = str(error.value)
    assert f"{tmp_path / 'p.en'} has 3 lines" in message and f"{tmp_path / 'p.de.gz'} has 2 lines" in message


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_prefix_bad_utf8_names_file_and_line(tmp_path, suffix):
    write(tmp_path / "p.en", "a\nb\nc\n")
    bad = write(tmp_path / f"p.de{suffix}", b"a\nb\n\xff\xfe c\n")
    with pytest.raises(DataError, match="line 3 is not valid UTF-8") as error:
        load_parallel_file(str(tmp_path / "p"), "en", "de")
    assert str(bad) in str(error.value)


def test_same_languages_rejected(tmp_path):
    with pytest.raises(DataError, match="both 'en'"):
        load_parallel_file(str(tmp_path / "p"), "en", "en")


@pytest.mark.parametrize("name", ["train.json", "train.jsonl"])
def test_json_lines(tmp_path, name):
    path = write_jsonl(tmp_path / name, [{"translation": {"en": "a cat", "vi": "một con mèo", "fr": "un chat"}},
                                         {"translation": {"vi": "chó", "en": "dog"}, "id": 7}])
    path.write_text(path.read_text(encoding="utf-8") + "\n", encoding="utf-8")  # a trailing blank line is fine
    assert load_parallel_file(str(path), "en", "vi") == [{"en": "a cat", "vi": "một con mèo"}, {"en": "dog", "vi": "chó"}]


def test_json_line_without_translation_key(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"translation": {"en": "a", "de": "b"}}, {"en": "a", "de": "b"}])
    with pytest.raises(DataError, match=r"line 2 has no 'translation' key") as error:
        load_parallel_file(str(path), "en", "de")
    assert str(path) in str(error.value)


def test_json_line_without_language_key(tmp_path):
    path = write_jsonl(tmp_path / "d.json", [{"translation": {"en": "a", "de": "b"}}] * 2
                       + [{"translation": {"en": "a", "fr": "b"}}])
    with pytest.raises(DataError, match=r"line 3: 'translation' has no key 'de' \(it has \['en', 'fr'\]\)") as error:
        load_parallel_file(str(path), "en", "de")
    assert str(path) in str(error.value)


def test_json_bad_line_and_non_string(tmp_path):
    bad = write(tmp_path / "bad.jsonl", '{"translation": {"en": "a", "de": "b"}}\n{"translation": \n')
    with pytest.raises(DataError, match=rf"{bad}: line 2 is not valid JSON"):
        load_parallel_file(str(bad), "en", "de")
    number = write_jsonl(tmp_path / "n.jsonl", [{"translation": {"en": "a", "de": 3}}])
    with pytest.raises(DataError, match=r"line 1: 'translation'\['de'\] must be a string"):
        load_parallel_file(str(number), "en", "de")
    with pytest.raises(DataError, match="no such file"):
        load_parallel_file(str(tmp_path / "absent.jsonl"), "en", "de")


def test_load_translation_datasets_from_files(tmp_path):
    write(tmp_path / "train.en", "a\nb\n")
    write(tmp_path / "train.de", "x\ny\n")
    test = write_jsonl(tmp_path / "test.jsonl", [{"translation": {"en": "c", "de": "z"}}])
    loaded = load_translation_datasets(source_lang="en", target_lang="de", train_file=str(tmp_path / "train"),
                                       test_file=str(test))
    assert list(loaded) == ["train", "test"]
    assert loaded["train"][1] == {"translation": {"en": "b", "de": "y"}}
    assert isinstance(loaded["test"].features["translation"], datasets.Translation)
    with pytest.raises(DataError, match="no data given"):
        load_translation_datasets(source_lang="en", target_lang="de")


def test_hub_path_normalizes_splits_and_columns(tmp_path, monkeypatch):
    # The Hub cannot be reached here: load_dataset is replaced by a stand-in holding what Hub datasets look like.
    per_language = datasets.Dataset.from_dict({"en": ["a", "b"], "de": ["x", "y"], "id": [0, 1]})
    hub = datasets.DatasetDict({"train": per_language, "dev": per_language.select([0]),
                                "test": per_language.select([1]), "extra": per_language})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or hub)
    loaded = load_translation_datasets(source_lang="de", target_lang="en", dataset_name="me/set",
                                       dataset_config_name="cfg", cache_dir=str(tmp_path), revision="r1")
    assert calls == [(("me/set", "cfg"), {"cache_dir": str(tmp_path), "revision": "r1", "data_dir": None})]
    assert list(loaded) == ["train", "validation", "test"]
    assert loaded["validation"].column_names == ["translation"]
    assert loaded["test"][0] == {"translation": {"de": "y", "en": "b"}}
    # a local file replaces the Hub's split of that name
    write(tmp_path / "v.de", "local\n")
    write(tmp_path / "v.en", "lokal\n")
    loaded = load_translation_datasets(source_lang="de", target_lang="en", dataset_name="me/set",
                                       validation_file=str(tmp_path / "v"))
    assert loaded["validation"]["translation"] == [{"de": "local", "en": "lokal"}]
    with pytest.raises(DataError, match=r"neither a 'translation' column nor columns 'fr' and 'en'.*\['en', 'de', 'id'\]"):
        load_translation_datasets(source_lang="fr", target_lang="en", dataset_name="me/set")


def test_hub_translation_column_languages_checked(monkeypatch):
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})
    split = datasets.Dataset.from_dict({"translation": [{"de": "x", "en": "a"}]}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict({"train": split}))
    loaded = load_translation_datasets(source_lang="en", target_lang="de", dataset_name="wmt/wmt14")
    assert loaded["train"][0] == {"translation": {"de": "x", "en": "a"}}
    with pytest.raises(DataError, match=r"no language 'fr'; it has \['de', 'en'\]"):
        load_translation_datasets(source_lang="fr", target_lang="de", dataset_name="wmt/wmt14")
    # a translation dict with more languages keeps only the pair
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en", "fr"])})
    three = datasets.Dataset.from_dict({"translation": [{"de": "x", "en": "a", "fr": "u"}], "id": [0]},
                                       features=datasets.Features({**features, "id": datasets.Value("int64")}))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict({"test": three}))
    loaded = load_translation_datasets(source_lang="fr", target_lang="en", dataset_name="x")
    assert loaded["test"].column_names == ["translation"]
    assert loaded["test"][0] == {"translation": {"en": "a", "fr": "u"}}
    clash = datasets.DatasetDict({"valid": split, "validation": split})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: clash)
    with pytest.raises(DataError, match="both mean 'validation'"):
        load_translation_datasets(source_lang="en", target_lang="de", dataset_name="x")


def test_real_load_dataset_of_a_local_folder(tmp_path):
    # datasets' own loader on a folder laid out like bentrevett/multi30k (jsonl, a column per language)
    write_jsonl(tmp_path / "train.jsonl", [{"en": "a dog", "de": "ein Hund"}, {"en": "a cat", "de": "eine Katze"}])
    write_jsonl(tmp_path / "val.jsonl", [{"en": "a man", "de": "ein Mann"}])
    loaded = load_translation_datasets(source_lang="en", target_lang="de", dataset_name=str(tmp_path),
                                       cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation"}
    assert loaded["validation"][0] == {"translation": {"en": "a man", "de": "ein Mann"}}


@pytest.mark.skipif(not (SHARED_DATA / "iwslt15_en_vi").is_dir(), reason="../shared/data/iwslt15_en_vi absent")
def test_iwslt15_tst2013_prefix():
    rows = load_parallel_file(str(SHARED_DATA / "iwslt15_en_vi" / "tst2013"), "en", "vi")
    assert len(rows) == 1268
    assert rows[0]["en"].startswith("When I was little , I thought my country was the best on the planet")
    assert rows[0]["vi"].startswith("Khi tôi còn nhỏ , Tôi nghĩ rằng BắcTriều Tiên")


def test_clean_pairs_lists_and_datasets():
    flat = [{"en": " a ", "de": "b"}, {"en": "  ", "de": "b"}, {"en": "c", "de": ""}, {"en": "d", "de": "e\t"}]
    kept, counts = clean_pairs(flat, "en", "de")
    assert kept == [{"en": "a", "de": "b"}, {"en": "d", "de": "e"}] and counts == {"dropped_empty": 2}
    nested = [{"translation": row} for row in flat]
    kept, counts = clean_pairs(nested, "en", "de")
    assert kept == [{"translation": {"en": "a", "de": "b"}}, {"translation": {"en": "d", "de": "e"}}]
    features = datasets.Features({"translation": datasets.Translation(languages=["en", "de"])})
    kept, counts = clean_pairs(datasets.Dataset.from_list(nested, features=features), "en", "de")
    assert kept["translation"] == [{"en": "a", "de": "b"}, {"en": "d", "de": "e"}] and counts == {"dropped_empty": 2}
    assert kept.features == features
    kept, counts = clean_pairs(datasets.Dataset.from_list(flat), "en", "de")
    assert kept.to_list() == [{"en": "a", "de": "b"}, {"en": "d", "de": "e"}] and counts == {"dropped_empty": 2}
    with pytest.raises(DataError, match=r"dataset has no language 'fr'; it has \['en', 'de'\]"):
        clean_pairs(datasets.Dataset.from_list(nested, features=features), "fr", "de")
    with pytest.raises(DataError, match="row 0 has no language 'fr'"):
        clean_pairs(flat, "fr", "de")


# ------------------------------------------------------------------------------------------ tokenizer


@pytest.fixture(scope="module")
def task() -> datasets.DatasetDict:
    return builtin_translation_task(num_train=1500, num_valid=100, num_test=100, seed=0)


@pytest.fixture(scope="module")
def tokenizer(task):
    extra = ["Zwei junge weiße Männer sind im Freien.", "Khi tôi còn nhỏ , Tôi nghĩ rằng", "Hello, World!"] * 3
    texts = [text for pair in task["train"]["translation"] for text in pair.values()] + extra
    return train_tokenizer(texts, 600, model="bpe")


def test_tokenizer_round_trip_and_special_ids(tokenizer, task, tmp_path):
    ids = special_token_ids(tokenizer)
    assert ids == {"pad_token_id": 2, "eos_token_id": 0, "decoder_start_token_id": 2, "forced_eos_token_id": 0,
                   "vocab_size": len(tokenizer)}
    assert len(tokenizer) == 600
    samples = [task["test"][i]["translation"][lang] for i in range(5) for lang in ("en", "xx")]
    samples += ["Zwei junge weiße Männer sind im Freien.", "Khi tôi còn nhỏ , Tôi nghĩ rằng", "Hello, World!"]
    for text in samples:
        encoded = tokenizer(text).input_ids
        assert encoded[-1] == tokenizer.eos_token_id and encoded.count(tokenizer.eos_token_id) == 1
        assert tokenizer.unk_token_id not in encoded
        assert tokenizer.decode(encoded, skip_special_tokens=True) == text
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert special_token_ids(loaded) == ids
    assert loaded.get_vocab() == tokenizer.get_vocab()
    for text in samples:
        assert loaded(text).input_ids == tokenizer(text).input_ids
        assert loaded.decode(loaded(text).input_ids, skip_special_tokens=True) == text


def test_unigram_tokenizer(task):
    texts = [text for pair in task["train"]["translation"][:800] for text in pair.values()]
    tokenizer = train_tokenizer(texts, 300, model="unigram")
    text = task["test"][0]["translation"]["xx"]
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text
    assert special_token_ids(tokenizer)["eos_token_id"] == 0
    with pytest.raises(DataError, match="model='wordpiece' is not supported"):
        train_tokenizer(texts, 300, model="wordpiece")


def test_tokenize_pairs_counts_truncation(tokenizer, task):
    subset = task["validation"]
    tokenized, counts = tokenize_pairs(subset, tokenizer, "en", "xx", max_source_length=8, max_target_length=12)
    assert tokenized.column_names == ["input_ids", "attention_mask", "labels"]
    full_src = [len(tokenizer(p["en"]).input_ids) for p in subset["translation"]]
    full_tgt = [len(tokenizer(p["xx"]).input_ids) for p in subset["translation"]]
    expected = sum(s > 8 or t > 12 for s, t in zip(full_src, full_tgt))
    assert 0 < expected < len(subset) and counts == {"truncated": expected}
    for row, s, t in zip(tokenized, full_src, full_tgt):
        assert len(row["input_ids"]) == min(s, 8) and len(row["labels"]) == min(t, 12)
        assert row["labels"][-1] == tokenizer.eos_token_id and row["input_ids"][-1] == tokenizer.eos_token_id
    assert token_lengths(tokenized) == [max(min(s, 8), min(t, 12)) for s, t in zip(full_src, full_tgt)]
    _, counts = tokenize_pairs(subset, tokenizer, "en", "xx", 256, 256)
    assert counts == {"truncated": 0}
    with pytest.raises(DataError, match="no language 'de'"):
        tokenize_pairs(subset, tokenizer, "en", "de", 8, 8)


def test_tokenize_pairs_with_a_sentencepiece_marian_tokenizer(task, tmp_path):
    # A converted Marian checkpoint brings MarianTokenizer (SentencePiece, not a fast tokenizer).
    spm = pytest.importorskip("sentencepiece")
    from transformers import MarianTokenizer

    texts = [text for pair in task["train"]["translation"][:1000] for text in pair.values()]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(tmp_path / "spm"), vocab_size=400,
                                   model_type="unigram", pad_id=-1, eos_id=0, unk_id=1, bos_id=-1,
                                   minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    vocab["<pad>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = MarianTokenizer(str(tmp_path / "spm.model"), str(tmp_path / "spm.model"), str(tmp_path / "vocab.json"))
    assert not getattr(tokenizer, "is_fast", False)
    subset = task["validation"]
    tokenized, counts = tokenize_pairs(subset, tokenizer, "en", "xx", max_source_length=8, max_target_length=12)
    full = [(len(tokenizer(p["en"]).input_ids), len(tokenizer(text_target=p["xx"]).input_ids))
            for p in subset["translation"]]
    assert counts == {"truncated": sum(s > 8 or t > 12 for s, t in full)} and counts["truncated"] > 0
    assert [len(ids) for ids in tokenized["labels"]] == [min(t, 12) for _, t in full]


# ------------------------------------------------------------------------------------------- sampler




def test_json_array_and_csv_files(tmp_path):
    pairs = [{"translation": {"en": "a cat", "de": "eine Katze"}}, {"translation": {"en": "dog", "de": "Hund"}}]
    array = tmp_path / "train.json"
    array.write_text(json.dumps(pairs, indent=2), encoding="utf-8")  # pretty-printed, one array
    assert load_parallel_file(str(array), "en", "de") == [{"en": "a cat", "de": "eine Katze"}, {"en": "dog", "de": "Hund"}]
    lines = tmp_path / "train.jsonl"
    lines.write_text(json.dumps(pairs, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl: holds a JSON array, but a .jsonl file must hold one object per "
                                        r"line"):
        load_parallel_file(str(lines), "en", "de")
    pretty = tmp_path / "pretty.jsonl"
    pretty.write_text(json.dumps(pairs[0], indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=r"pretty.jsonl: line 1 is not valid JSON .*pretty-printed object"):
        load_parallel_file(str(pretty), "en", "de")
    csv_file = write(tmp_path / "train.csv", 'en,de\n"a cat, small",eine kleine Katze\ndog,Hund\n')
    assert load_parallel_file(str(csv_file), "en", "de") == [{"en": "a cat, small", "de": "eine kleine Katze"},
                                                              {"en": "dog", "de": "Hund"}]
    bad_header = write(tmp_path / "h.csv", "source,target\na,b\n")
    with pytest.raises(DataError, match=r"h.csv: the header row has no column 'en' \(it has \['source', 'target'\]\)"):
        load_parallel_file(str(bad_header), "en", "de")
    ragged = write(tmp_path / "r.csv", "en,de\na,b\nc\n")
    with pytest.raises(DataError, match=r"r.csv: line 3 has 1 fields, the header 2"):
        load_parallel_file(str(ragged), "en", "de")


def test_a_folder_where_a_file_is_expected_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"train is a folder; give a file, or the prefix P of P.<lang> files"):
        load_parallel_file(str(tmp_path / "train"), "en", "de")
