"""Tests of hf_rskip.data.builtin: the generated translation task and its grammar."""

from __future__ import annotations

import datasets
import pytest

import hf_rskip.data.builtin as B
from hf_rskip.data import DataError, builtin_translation_task, reference_translate


@pytest.fixture(scope="module")
def task() -> datasets.DatasetDict:
    return builtin_translation_task(num_train=1500, num_valid=100, num_test=100, seed=0)




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
    lex = B._LEXICON
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
    classes = [set(B._NOUN_FORMS), set(B._VERB_FORMS) | {"will", "do", "does", "did", "not"},
               set(B._LEXICON["adjective"]), set(B._PREPOSITIONS), set(B._ADVERBS), set(B._PRONOUNS),
               set(B._NUMBER_VALUES), set(B._DETERMINERS) | {"an"}]
    for i, first in enumerate(classes):
        for second in classes[i + 1:]:
            assert not first & second
    assert len(B._NOUN_FORMS) == 2 * len(B._NOUNS) and len(B._VERB_FORMS) == 3 * len(B._VERBS)
    invented = [w for table in ("noun", "adjective", "verb", "preposition", "adverb", "pronoun", "unit")
                for w in B._LEXICON[table].values()]
    assert len(invented) == len(set(invented)) > 200
