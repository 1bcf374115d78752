"""Tests of hf_rskip.data.recipes: the named datasets, their hyperparameters and the staged data folder."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from hf_rskip.data import DATASET_RECIPES, DataError, clean_pairs, load_recipe, recipe_hparams
from hf_rskip.data.recipes import recipe_loader_options, shared_data_dir
from hf_rskip.models.configuration_rskip import TEXT_PRESETS

SHARED_DATA = shared_data_dir()


@pytest.mark.skipif(not (SHARED_DATA / "multi30k").is_dir(), reason="../shared/data/multi30k absent")
def test_multi30k_local_recipe():
    loaded = load_recipe("local_multi30k_en_de")
    assert {split: len(ds) for split, ds in loaded.items()} == {"train": 29000, "validation": 1014, "test": 1000}
    assert loaded["train"][0]["translation"] == {
        "en": "Two young, White males are outside near many bushes.",
        "de": "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    }
    assert clean_pairs(loaded["test"], "en", "de")[1] == {"dropped_empty": 0}


def test_recipes_are_complete():
    hub_keys = {"dataset_name", "dataset_config_name", "source_lang", "target_lang", "hparams"}
    needed = {"preset", "max_tokens", "learning_rate", "num_warmup_steps", "label_smoothing", "dropout", "num_beams",
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
        assert ("num_train_epochs" in hparams) != ("max_train_steps" in hparams), name
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
        assert recipe_loader_options("iwslt15_en_vi")["validation_file"] is None


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data absent")
def test_local_recipe_paths_exist():
    for name, recipe in DATASET_RECIPES.items():
        options = recipe_loader_options(name)
        for key in ("train_file", "validation_file", "test_file"):
            if options.get(key) is not None:
                prefix = options[key]
                for lang in (recipe["source_lang"], recipe["target_lang"]):
                    assert Path(f"{prefix}.{lang}").is_file() or Path(f"{prefix}.{lang}.gz").is_file(), (name, key)


# ---------------------------------------------------------------------------------------- cleaning




def test_shared_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_RSKIP_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    assert recipe_loader_options("local_multi30k_en_de")["train_file"] == str(tmp_path / "multi30k" / "train")
    assert recipe_loader_options("iwslt15_en_vi")["validation_file"] is None  # not staged there
    monkeypatch.delenv("HF_RSKIP_SHARED_DATA")
    assert shared_data_dir().parts[-2:] == ("shared", "data")
