"""Tests for hf_rskip.modelcard: template lookup, metadata with a model-index, rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_rskip.modelcard import TEMPLATES_ENV, find_template, translation_eval_results, write_model_card

REPO = Path(__file__).resolve().parents[1]


def test_templates_ship_inside_the_package() -> None:
    import hf_rskip

    package = Path(hf_rskip.__file__).parent
    assert find_template("translation.md") == package / "model_cards" / "translation.md"
    assert find_template("image_classification.md") == package / "model_cards" / "image_classification.md"


def test_env_folder_wins_and_missing_template_names_the_searched_folders(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "translation.md").write_text("---\n{{ card_data }}\n---\nmine {{ x }}\n")
    monkeypatch.setenv(TEMPLATES_ENV, str(tmp_path))
    assert find_template("translation.md") == tmp_path / "translation.md"
    with pytest.raises(FileNotFoundError, match=r"'nope.md' not found; searched: .*model_cards"):
        find_template("nope.md")


def test_generic_card_has_model_index_and_rendered_body(tmp_path: Path) -> None:
    template = tmp_path / "t.md"
    template.write_text("---\n{{ card_data }}\n---\n# {{ model_name }}\nscheme {{ scheme }}\n")
    card = write_model_card(
        tmp_path / "out",
        template_name=str(template),
        card_data_kwargs={"model_name": "demo", "license": "apache-2.0", "tags": ["rskip"]},
        eval_results=[
            {"task_type": "image-classification", "dataset_type": "cifar10", "dataset_name": "CIFAR-10",
             "metric_type": "accuracy", "metric_value": 0.91},
            {"task_type": "image-classification", "dataset_type": "cifar10", "dataset_name": "CIFAR-10",
             "metric_type": "loss", "metric_value": None},  # not measured → left out
        ],
        scheme="rskip_ln",
    )
    loaded = ModelCard.load(tmp_path / "out" / "README.md")
    assert loaded.data.license == "apache-2.0"
    assert [(r.metric_type, r.metric_value) for r in loaded.data.eval_results] == [("accuracy", 0.91)]
    assert "# demo\nscheme rskip_ln" in loaded.text
    assert card.data.model_name == "demo"
    with pytest.raises(ValueError, match="model_name"):
        write_model_card(tmp_path / "o2", template_name=str(template), card_data_kwargs={},
                         eval_results=[{"task_type": "t", "dataset_type": "d", "dataset_name": "D",
                                        "metric_type": "m", "metric_value": 1.0}])


def test_translation_eval_results_carry_bleu_chrf_and_signatures() -> None:
    results = {
        "eval_bleu": 30.123, "eval_chrf": 55.0, "eval_bleu_signature": "nrefs:1|tok:13a",
        "test_bleu": 28.5, "test_chrf": 53.25, "test_bleu_signature": "nrefs:1|tok:13a",
        "test_chrf_signature": "nrefs:1|nc:6", "test_split_name": "test_2016_flickr",
    }
    entries = translation_eval_results(results, dataset_type="bentrevett/multi30k", dataset_name="Multi30k",
                                       source_lang="en", target_lang="de")
    assert [(e["dataset_split"], e["metric_type"], e["metric_value"]) for e in entries] == [
        ("validation", "sacrebleu", 30.12), ("validation", "chrf", 55.0),
        ("test_2016_flickr", "sacrebleu", 28.5), ("test_2016_flickr", "chrf", 53.25),
    ]
    assert entries[2]["metric_config"] == "nrefs:1|tok:13a"
    assert translation_eval_results({}, dataset_type="d", dataset_name="D", source_lang="a", target_lang="b") == []


def test_push_uploads_the_model_folder_without_training_by_products(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from hf_rskip.hub import push_folder_to_hub

    folder = tmp_path / "out"
    for name in ("config.json", "model.safetensors", "README.md", "tokenizer.json", "results.json",
                 "modeling_rskip.py", "checkpoints/checkpoint-4/optimizer.bin", "runs/events.out.tfevents.1",
                 "checkpoints/checkpoint-8.tmp/model.safetensors"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    calls = {}

    def fake_create_repo(repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_upload_folder(**kwargs):
        calls["upload"] = kwargs
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        calls["files"] = sorted(filter_repo_objects(files, ignore_patterns=kwargs["ignore_patterns"]))
        return "https://huggingface.co/someone/m/commit/abc"

    monkeypatch.setattr(huggingface_hub, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", fake_upload_folder)
    url = push_folder_to_hub(folder, "someone/m", private=True)
    assert url.endswith("/commit/abc")
    assert calls["create"] == ("someone/m", {"token": None, "private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"]["folder_path"] == str(folder) and calls["upload"]["repo_id"] == "someone/m"
    assert calls["files"] == ["README.md", "config.json", "model.safetensors", "modeling_rskip.py", "results.json",
                              "tokenizer.json"]
    with pytest.raises(FileNotFoundError, match="no config.json"):
        push_folder_to_hub(tmp_path, "someone/m")
