"""Tests of hf_rskip.data: loaders and their errors, recipes, tokenizer, token batches, the built-in task."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import datasets
import pytest
from torch.utils.data import DataLoader

from hf_rskip import data as D
from hf_rskip.configuration_rskip import TEXT_PRESETS
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

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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


@pytest.mark.skipif(not (SHARED_DATA / "multi30k").is_dir(), reason="../shared/data/multi30k absent")
def test_multi30k_local_recipe():
    loaded = load_recipe("local_multi30k_en_de")
    assert {split: len(ds) for split, ds in loaded.items()} == {"train": 29000, "validation": 1014, "test": 1000}
    assert loaded["train"][0]["translation"] == {
        "en": "Two young, White males are outside near many bushes.",
        "de": "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    }
    assert clean_pairs(loaded["test"], "en", "de")[1] == {"dropped_empty": 0}


@pytest.mark.skipif(not (SHARED_DATA / "iwslt15_en_vi").is_dir(), reason="../shared/data/iwslt15_en_vi absent")
def test_iwslt15_tst2013_prefix():
    rows = load_parallel_file(str(SHARED_DATA / "iwslt15_en_vi" / "tst2013"), "en", "vi")
    assert len(rows) == 1268
    assert rows[0]["en"].startswith("When I was little , I thought my country was the best on the planet")
    assert rows[0]["vi"].startswith("Khi tôi còn nhỏ , Tôi nghĩ rằng BắcTriều Tiên")


def test_recipes_are_complete():
    hub_keys = {"dataset_name", "dataset_config_name", "source_lang", "target_lang", "hparams"}
    needed = {"preset", "max_tokens", "learning_rate", "warmup_steps", "label_smoothing", "dropout", "num_beams",
              "length_penalty", "bleu_tokenize"}
    assert {"iwslt15_en_vi", "wmt14_en_de", "multi30k_en_de"} <= set(DATASET_RECIPES)
    for name, recipe in DATASET_RECIPES.items():
        if name.startswith("local_"):
            assert any(k in recipe for k in ("train_file", "validation_file", "test_file")), name
        else:
            assert hub_keys <= set(recipe), name
        hparams = recipe_hparams(name)
        assert needed <= set(hparams), name
        assert hparams["preset"] in TEXT_PRESETS
        assert ("max_epochs" in hparams) != ("max_steps" in hparams), name
    with pytest.raises(DataError, match="recipe='nope' is unknown"):
        load_recipe("nope")
    with pytest.raises(DataError, match=r"unknown loader option\(s\) \['batch'\]"):
        load_recipe("local_multi30k_en_de", batch=3)


def test_hub_recipe_wiring(monkeypatch):
    # What load_recipe asks of datasets.load_dataset for the paper's IWSLT'15 recipe (the Hub is unreachable here).
    features = datasets.Features({"translation": datasets.Translation(languages=["en", "vi"])})
    tst2013 = datasets.Dataset.from_dict({"translation": [{"en": "a", "vi": "b"}]}, features=features)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or datasets.DatasetDict(
        {"train": tst2013, "validation": tst2013, "test": tst2013}))
    loaded = load_recipe("iwslt15_en_vi")
    assert calls == [(("IWSLT/mt_eng_vietnamese", None),
                      {"cache_dir": None, "revision": "refs/convert/parquet", "data_dir": "iwslt2015-en-vi"})]
    if (SHARED_DATA / "iwslt15_en_vi" / "tst2012.en").is_file():  # the Hub's validation split is its test set
        assert len(loaded["validation"]) == 1553
    else:
        assert DATASET_RECIPES["iwslt15_en_vi"]["validation_file"] is None


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data absent")
def test_local_recipe_paths_exist():
    for name, recipe in DATASET_RECIPES.items():
        for key in ("train_file", "validation_file", "test_file"):
            if recipe.get(key) is not None:
                prefix = recipe[key]
                for lang in (recipe["source_lang"], recipe["target_lang"]):
                    assert Path(f"{prefix}.{lang}").is_file() or Path(f"{prefix}.{lang}.gz").is_file(), (name, key)


# ---------------------------------------------------------------------------------------- cleaning


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


def random_lengths(n: int = 600, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 60) for _ in range(n)]


@pytest.mark.parametrize("shuffle, rebucket", [(True, False), (True, True), (False, False)])
def test_sampler_fits_max_tokens_and_covers_every_index_once(shuffle, rebucket):
    lengths = random_lengths() + [500]  # one example longer than max_tokens
    sampler = TokenBatchSampler(lengths, 256, shuffle=shuffle, seed=1, bucket_size_multiplier=5,
                                rebucket_each_epoch=rebucket)
    assert sampler.num_oversized == 1
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for batch in batches:
            if batch == [len(lengths) - 1]:
                continue  # the oversized example, alone
            assert max(lengths[i] for i in batch) * len(batch) <= 256
        assert [len(lengths) - 1] in batches
    if not shuffle:  # evaluation order: by length, ties by index
        flat = [i for b in sampler for i in b]
        assert flat == sorted(range(len(lengths)), key=lambda i: (lengths[i], i))


def test_sampler_deterministic_per_seed_and_epoch():
    lengths = random_lengths()
    a, b = TokenBatchSampler(lengths, 300, seed=7), TokenBatchSampler(lengths, 300, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    a.set_epoch(4)
    assert list(a) != list(b)
    # by default (fairseq) an epoch reorders the same batches, so len() never changes
    assert sorted(a) == sorted(b) and len(a) == len(b)
    assert list(TokenBatchSampler(lengths, 300, seed=8)) != list(TokenBatchSampler(lengths, 300, seed=7))
    # batches are nearly uniform in length (little padding), thanks to sorting within buckets
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in a)
    assert padded < 1.15 * sum(lengths)


def test_sampler_rebucketing_changes_batches():
    lengths = random_lengths()
    sampler = TokenBatchSampler(lengths, 300, seed=7, bucket_size_multiplier=3, rebucket_each_epoch=True)
    first = sorted(sampler.batches(0))
    assert first != sorted(sampler.batches(1))
    assert first == sorted(TokenBatchSampler(lengths, 300, seed=7, bucket_size_multiplier=3,
                                             rebucket_each_epoch=True).batches(0))


def test_sampler_errors():
    with pytest.raises(DataError, match="max_tokens=0"):
        TokenBatchSampler([1, 2], 0)
    with pytest.raises(DataError, match="lengths"):
        TokenBatchSampler([1, 0], 10)


def test_sampler_under_accelerate_two_processes():
    # accelerate deals the batches round-robin to the processes and sets the epoch on every iteration.
    from accelerate.data_loader import prepare_data_loader

    lengths = random_lengths(300)
    reference = TokenBatchSampler(lengths, 200, seed=3)
    shards = []
    for rank in range(2):
        loader = DataLoader(list(range(len(lengths))), batch_sampler=TokenBatchSampler(lengths, 200, seed=3),
                            collate_fn=lambda batch: batch)
        prepared = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False)
        shards.append([list(prepared), list(prepared)])  # epochs 0 and 1
    for epoch in range(2):
        expected = reference.batches(epoch)
        first, second = shards[0][epoch], shards[1][epoch]
        assert first[: len(expected) // 2] == expected[0::2][: len(expected) // 2]
        assert second[: len(expected) // 2] == expected[1::2][: len(expected) // 2]
        assert {tuple(b) for b in first + second} == {tuple(b) for b in expected}
    assert shards[0][0] != shards[0][1]


# --------------------------------------------------------------------------------------- built-in task


def test_builtin_task_deterministic_and_disjoint(task):
    again = builtin_translation_task(num_train=1500, num_valid=100, num_test=100, seed=0)
    for split in ("train", "validation", "test"):
        assert again[split]["translation"] == task[split]["translation"]
    other = builtin_translation_task(num_train=10, num_valid=10, num_test=100, seed=1)
    assert other["test"]["translation"] != task["test"]["translation"]
    # the test set of a seed does not depend on the training set's size
    assert other["test"]["translation"] == builtin_translation_task(5, 3, 100, seed=1)["test"]["translation"]
    sources = {split: {p["en"] for p in task[split]["translation"]} for split in task}
    assert len(sources["train"]) == 1500 and len(sources["test"]) == 100
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["validation"]
    assert not sources["validation"] & sources["test"]
    for pair in task["test"]["translation"]:
        assert 5 <= len(pair["en"].split()) <= 15
        assert pair["xx"] == reference_translate(pair["en"])
    # enough variety that memorising fails: most test words occur in training, but whole sentences never do
    train_words = {w for p in task["train"]["translation"] for w in p["en"].split()}
    test_words = [w for p in task["test"]["translation"] for w in p["en"].split()]
    assert sum(w in train_words for w in test_words) / len(test_words) > 0.95
    assert len(train_words) > 200


def test_reference_translate_grammar():
    lex = D._LEXICON
    assert reference_translate("the dog sees a cat .") == " ".join(
        [lex["noun"]["dog"], lex["determiner"]["the"], lex["noun"]["cat"] + "n", lex["verb"]["see"], "."])
    got = reference_translate("they did not chase the thirteen big lions near an old tree today .")
    assert got == " ".join([
        lex["pronoun"]["they"], lex["adverb"]["today"],
        lex["noun"]["tree"], lex["adjective"]["old"], lex["preposition"]["near"],
        lex["noun"]["lion"] + "in", lex["adjective"]["big"] + "s", lex["function"]["ten"], lex["unit"][3],
        lex["determiner"]["the"], lex["function"]["not"], lex["verb"]["chase"] + "tan", ".",
    ])
    assert reference_translate("my children will hold these two apples .").split()[-2] == lex["verb"]["hold"] + "run"
    with pytest.raises(DataError, match=r"expected a verb at word 3 \('quickly'\)"):
        reference_translate("the dog quickly sees a cat .")
    with pytest.raises(DataError, match="'.' ending the sentence"):
        reference_translate("the dog sees a cat . extra")


def test_builtin_word_forms_are_unambiguous():
    # greedy parsing needs every surface form to belong to one word class only
    classes = [set(D._NOUN_FORMS), set(D._VERB_FORMS) | {"will", "do", "does", "did", "not"},
               set(D._LEXICON["adjective"]), set(D._PREPOSITIONS), set(D._ADVERBS), set(D._PRONOUNS),
               set(D._NUMBER_VALUES), set(D._DETERMINERS) | {"an"}]
    for i, first in enumerate(classes):
        for second in classes[i + 1:]:
            assert not first & second
    assert len(D._NOUN_FORMS) == 2 * len(D._NOUNS) and len(D._VERB_FORMS) == 3 * len(D._VERBS)
    invented = [w for table in ("noun", "adjective", "verb", "preposition", "adverb", "pronoun", "unit")
                for w in D._LEXICON[table].values()]
    assert len(invented) == len(set(invented)) > 200
