"""Translation data: loading and cleaning parallel text, tokenizing it, training subword tokenizers.

Every loader returns rows in the format of transformers' ``run_translation.py`` example,
``{"translation": {source_lang: "...", target_lang: "..."}}``, whether the text comes from the Hugging
Face Hub, from JSON lines, or from parallel plain-text files (``prefix.en`` / ``prefix.de.gz``, the
Stanford and fairseq layout). Every problem with the data raises :class:`DataError` with a message that
names the file, the line, the key or the option at fault.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .errors import DataError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""The split names every loader returns (a subset of)."""

# Hub datasets name their splits in several ways; these all mean one of SPLITS.
_SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    """Reads a UTF-8 text file (optionally gzipped) into lines without their line ends.

    Lines are split on ``\\n`` only: ``str.splitlines`` would also split on characters such as U+2028 or
    U+0085 that occur inside real sentences and would silently misalign the two sides of a corpus.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    lines = []
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(
                        f"{path}: line {number} is not valid UTF-8 ({error.reason} at byte {error.start})"
                    ) from None
                if number == 1:
                    text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the first sentence
                lines.append(text.rstrip("\r\n"))
    except (OSError, EOFError) as error:  # e.g. a truncated or corrupt gzip stream
        raise DataError(f"{path}: cannot be read ({error})") from None
    return lines


def _pair_from_record(record: Any, where: str, source_lang: str, target_lang: str) -> dict[str, str]:
    """``{"translation": {lang: text}}`` → a checked pair; ``where`` names the file and line."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object {{\"translation\": {{...}}}}, got {type(record).__name__}")
    pair = record.get("translation")
    if pair is None:
        raise DataError(f"{where} has no 'translation' key; expected {{\"translation\": {{...}}}}")
    if not isinstance(pair, dict):
        raise DataError(f"{where}: 'translation' must be an object, got {type(pair).__name__}")
    for lang in (source_lang, target_lang):
        if lang not in pair:
            raise DataError(f"{where}: 'translation' has no key {lang!r} (it has {sorted(pair)})")
        if not isinstance(pair[lang], str):
            raise DataError(f"{where}: 'translation'[{lang!r}] must be a string, got {type(pair[lang]).__name__}")
    return {source_lang: pair[source_lang], target_lang: pair[target_lang]}


def _load_json(path: Path, source_lang: str, target_lang: str) -> list[dict[str, str]]:
    """JSON Lines (one object per line), or for ``.json`` also one array of objects (as ``datasets`` reads)."""
    lines = _read_lines(path)
    first = next((line.lstrip() for line in lines if line.strip()), "")
    if first.startswith("["):
        if path.suffix == ".jsonl":
            raise DataError(f"{path}: holds a JSON array, but a .jsonl file must hold one object per line (JSON "
                            "Lines); rename it to .json, or write one {\"translation\": {...}} object per line")
        try:
            records = json.loads("\n".join(lines))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {error.lineno} is not valid JSON ({error.msg} at column {error.colno})") \
                from None
        return [_pair_from_record(r, f"{path}: item {i}", source_lang, target_lang) for i, r in enumerate(records)]
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # a blank line (e.g. a trailing one) holds no example
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            hint = " (a pretty-printed object? JSON Lines needs one object per line)" if line.strip() in "{[" else ""
            raise DataError(f"{path}: line {number} is not valid JSON ({error.msg} at column {error.colno}){hint}") \
                from None
        rows.append(_pair_from_record(record, f"{path}: line {number}", source_lang, target_lang))
    return rows


def _load_csv(path: Path, source_lang: str, target_lang: str) -> list[dict[str, str]]:
    """A CSV file with a header row naming the languages (``en,de``); one pair per row."""
    import csv

    lines = _read_lines(path)
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    for lang in (source_lang, target_lang):
        if lang not in header:
            raise DataError(f"{path}: the header row has no column {lang!r} (it has {header}); name the columns "
                            "after the language codes")
    rows = []
    try:
        for row in reader:
            fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
            if fields != len(header):
                raise DataError(f"{path}: line {reader.line_num} has {fields} fields, the header {len(header)}")
            rows.append({source_lang: row[source_lang], target_lang: row[target_lang]})
    except csv.Error as error:
        raise DataError(f"{path}: line {reader.line_num}: {error}") from None
    return rows


def find_parallel_side(prefix: str, lang: str) -> Path:
    tried = [Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise DataError(f"no {lang!r} side for prefix {prefix!r}; tried {', '.join(str(p) for p in tried)}")


def load_parallel_file(path: str, source_lang: str, target_lang: str) -> list[dict[str, str]]:
    """Reads one split of parallel text.

    Args:
        path: a ``.json`` / ``.jsonl`` file with one object ``{"translation": {lang: text, ...}}`` per line
            (a ``.json`` file may also hold one array of such objects), a ``.csv`` file whose header names the
            languages, or a prefix ``P`` of two plain-text files ``P.<source_lang>`` and ``P.<target_lang>``
            (each optionally gzipped, ``P.<lang>.gz``) holding one sentence per line, line i of one being
            the translation of line i of the other.
        source_lang: the source language code, e.g. ``"en"``.
        target_lang: the target language code, e.g. ``"de"``.

    Returns:
        One ``{source_lang: text, target_lang: text}`` per example, in file order, text unchanged
        (see :func:`clean_pairs` to strip and drop empty pairs).

    Raises:
        DataError: a missing file (naming the paths tried), sides of different lengths (naming both files and
            counts), invalid UTF-8 or JSON (naming file and line), or a JSON line without ``translation`` or
            a language key (naming the line and the key).
    """
    if source_lang == target_lang:
        raise DataError(f"source_lang and target_lang are both {source_lang!r}; they must differ")
    if Path(path).is_dir():
        raise DataError(f"{path} is a folder; give a file, or the prefix P of P.<lang> files")
    if str(path).endswith((".json", ".jsonl", ".csv")):
        file = Path(path)
        if not file.is_file():
            raise DataError(f"{file}: no such file")
        return (_load_csv if file.suffix == ".csv" else _load_json)(file, source_lang, target_lang)
    source_path, target_path = find_parallel_side(path, source_lang), find_parallel_side(path, target_lang)
    sources, targets = _read_lines(source_path), _read_lines(target_path)
    if len(sources) != len(targets):
        raise DataError(
            f"parallel files differ in length: {source_path} has {len(sources)} lines, "
            f"{target_path} has {len(targets)} lines"
        )
    return [{source_lang: s, target_lang: t} for s, t in zip(sources, targets)]


def _translation_features(source_lang: str, target_lang: str) -> datasets.Features:
    return datasets.Features({"translation": datasets.Translation(languages=[source_lang, target_lang])})


def translation_dataset(pairs: Sequence[Mapping[str, str]], source_lang: str, target_lang: str) -> datasets.Dataset:
    rows = {"translation": [{source_lang: p[source_lang], target_lang: p[target_lang]} for p in pairs]}
    return datasets.Dataset.from_dict(rows, features=_translation_features(source_lang, target_lang))


def _languages_of(dataset: datasets.Dataset) -> list[str] | None:
    """The language keys of a ``translation`` column, from its features (no row is read)."""
    feature = dataset.features.get("translation")
    if isinstance(feature, datasets.Translation):
        return list(feature.languages)
    if isinstance(feature, dict):
        return list(feature)
    return None


def _normalize_hub_split(dataset: datasets.Dataset, split: str, name: str, source_lang: str,
                         target_lang: str) -> datasets.Dataset:
    """Brings one Hub split to ``{"translation": {src, tgt}}``, checking the languages are there."""
    columns = dataset.column_names
    if "translation" in columns:
        languages = _languages_of(dataset)
        if languages is None and len(dataset):
            languages = list(dataset[0]["translation"])
        missing = [lang for lang in (source_lang, target_lang) if lang not in (languages or [])]
        if missing:
            raise DataError(
                f"dataset {name!r} split {split!r}: 'translation' has no language {missing[0]!r}; "
                f"it has {languages}. Choose source_lang/target_lang among these."
            )
        if set(languages) == {source_lang, target_lang}:
            # already in shape (e.g. wmt/wmt14 de-en): no pass over millions of rows
            return dataset.select_columns(["translation"])

        def pick(batch: dict[str, list]) -> dict[str, list]:
            return {"translation": [{source_lang: pair[source_lang], target_lang: pair[target_lang]}
                                    for pair in batch["translation"]]}
    elif source_lang in columns and target_lang in columns:
        # e.g. bentrevett/multi30k: one column per language

        def pick(batch: dict[str, list]) -> dict[str, list]:
            return {"translation": [{source_lang: s, target_lang: t}
                                    for s, t in zip(batch[source_lang], batch[target_lang])]}
    else:
        raise DataError(
            f"dataset {name!r} split {split!r} has neither a 'translation' column nor columns "
            f"{source_lang!r} and {target_lang!r}; its columns are {columns}"
        )
    return dataset.map(pick, batched=True, remove_columns=columns,
                       features=_translation_features(source_lang, target_lang), desc=f"{split}: to translation pairs")


def load_translation_datasets(
    *,
    source_lang: str,
    target_lang: str,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    cache_dir: str | None = None,
    revision: str | None = None,
    data_dir: str | None = None,
) -> datasets.DatasetDict:
    """Loads translation splits from the Hub and/or local files.

    Args:
        source_lang: the source language code (a key of every ``translation`` dict, or a column name).
        target_lang: the target language code.
        dataset_name: a Hub dataset (``datasets.load_dataset`` name), e.g. ``"wmt/wmt14"``.
        dataset_config_name: its configuration, e.g. ``"de-en"``.
        train_file: a local train split, in any form :func:`load_parallel_file` reads.
        validation_file: a local validation split; replaces the Hub's validation split if both are given
            (useful where the Hub's split is wrong, see ``DATASET_RECIPES["iwslt15_en_vi"]``).
        test_file: a local test split; replaces the Hub's test split if both are given.
        cache_dir: where ``datasets`` caches Hub downloads.
        revision: the Hub revision (branch, tag or commit) of ``dataset_name``.
        data_dir: a folder inside the Hub repository to read (``datasets.load_dataset``'s ``data_dir``).

    Returns:
        A ``DatasetDict`` with some of the splits ``"train"``, ``"validation"``, ``"test"`` (Hub names such as
        ``"valid"``, ``"val"`` and ``"dev"`` are renamed; other Hub splits are dropped), each with one column
        ``translation`` of ``{source_lang: str, target_lang: str}``.

    Raises:
        DataError: no source given, a bad file (see :func:`load_parallel_file`), Hub split names that clash,
            or a language missing from the Hub rows.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    if dataset_name is None and not any(files.values()):
        raise DataError("no data given: pass dataset_name, or at least one of train_file/validation_file/test_file")
    if source_lang == target_lang:
        raise DataError(f"source_lang and target_lang are both {source_lang!r}; they must differ")
    splits: dict[str, datasets.Dataset] = {}
    if dataset_name is not None:
        hub = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, revision=revision,
                                    data_dir=data_dir)
        renamed: dict[str, str] = {}
        for split in hub:
            canonical = _SPLIT_ALIASES.get(str(split).lower())
            if canonical is None:
                logger.info("dataset %s: ignoring split %r (not one of %s)", dataset_name, split, SPLITS)
                continue
            if canonical in renamed:
                raise DataError(
                    f"dataset {dataset_name!r}: splits {renamed[canonical]!r} and {split!r} both mean {canonical!r}"
                )
            renamed[canonical] = split
            if files[canonical] is None:
                splits[canonical] = _normalize_hub_split(hub[split], str(split), dataset_name, source_lang, target_lang)
    for split, path in files.items():
        if path is not None:
            splits[split] = translation_dataset(load_parallel_file(path, source_lang, target_lang), source_lang, target_lang)
    return datasets.DatasetDict({split: splits[split] for split in SPLITS if split in splits})


# --------------------------------------------------------------------------------------------------
# Cleaning and tokenization
# --------------------------------------------------------------------------------------------------


def _pair_of(row: Mapping[str, Any]) -> Mapping[str, str]:
    return row["translation"] if "translation" in row else row


def clean_pairs(
    rows: Iterable[Mapping[str, Any]] | datasets.Dataset, source_lang: str, target_lang: str
) -> tuple[list[dict[str, Any]] | datasets.Dataset, dict[str, int]]:
    """Strips surrounding whitespace and drops pairs with an empty side.

    Args:
        rows: flat pairs ``{src: ..., tgt: ...}`` (as :func:`load_parallel_file` returns) or
            ``{"translation": {...}}`` rows, as a list or as a ``datasets.Dataset``.
        source_lang: the source language key.
        target_lang: the target language key.

    Returns:
        The kept rows in the same shape and order (a ``Dataset`` for a ``Dataset``), and counts
        ``{"dropped_empty": n}``.
    """
    def strip(row: Mapping[str, Any]) -> dict[str, Any]:
        pair = _pair_of(row)
        stripped = {source_lang: pair[source_lang].strip(), target_lang: pair[target_lang].strip()}
        return {"translation": stripped} if "translation" in row else stripped

    def keep(row: Mapping[str, Any]) -> bool:
        pair = _pair_of(row)
        return bool(pair[source_lang].strip()) and bool(pair[target_lang].strip())

    if isinstance(rows, datasets.Dataset):
        nested = "translation" in rows.column_names
        present = (_languages_of(rows) or []) if nested else rows.column_names
        for lang in (source_lang, target_lang):
            if lang not in present:
                raise DataError(f"dataset has no language {lang!r}; it has {present}")

        def pairs_of(batch: dict[str, list]) -> list[Mapping[str, str]]:
            if nested:
                return batch["translation"]
            return [{source_lang: s, target_lang: t} for s, t in zip(batch[source_lang], batch[target_lang])]

        def strip_batch(batch: dict[str, list]) -> dict[str, list]:
            stripped = [strip(pair) for pair in pairs_of(batch)]
            if nested:
                return {"translation": stripped}
            return {lang: [pair[lang] for pair in stripped] for lang in (source_lang, target_lang)}

        # batched: a Hub training set can hold millions of rows
        kept = rows.filter(lambda batch: [keep(pair) for pair in pairs_of(batch)], batched=True,
                           desc="dropping empty pairs")
        kept = kept.map(strip_batch, batched=True, features=rows.features, desc="stripping")
        return kept, {"dropped_empty": len(rows) - len(kept)}
    rows = list(rows)
    for number, row in enumerate(rows):
        pair = _pair_of(row)
        for lang in (source_lang, target_lang):
            if lang not in pair:
                raise DataError(f"row {number} has no language {lang!r}; it has {sorted(pair)}")
    kept_rows = [strip(row) for row in rows if keep(row)]
    return kept_rows, {"dropped_empty": len(rows) - len(kept_rows)}


def tokenize_pairs(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    source_lang: str,
    target_lang: str,
    max_source_length: int,
    max_target_length: int,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Tokenizes ``{"translation": ...}`` rows for a seq2seq model.

    Args:
        dataset: rows ``{"translation": {source_lang: str, target_lang: str}}``.
        tokenizer: a tokenizer that appends ``</s>`` (e.g. from :func:`train_tokenizer`, or Marian's).
        source_lang: the source language key.
        target_lang: the target language key.
        max_source_length: longer sources are cut to this many tokens (``</s>`` included).
        max_target_length: longer targets are cut to this many tokens (``</s>`` included).

    Returns:
        The dataset with columns ``input_ids``, ``attention_mask`` and ``labels`` only (row order kept, so
        row i still translates ``dataset[i]``), and ``{"truncated": n}``: the number of pairs in which either
        side was cut.
    """
    for name, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise DataError(f"{name}={value!r} must be an integer >= 2 (room for a token and </s>)")
    languages = _languages_of(dataset)
    for lang in (source_lang, target_lang):
        if languages is not None and lang not in languages:
            raise DataError(f"dataset has no language {lang!r} in 'translation'; it has {languages}")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        sources = [pair[source_lang] for pair in batch["translation"]]
        targets = [pair[target_lang] for pair in batch["translation"]]
        model_inputs = tokenizer(sources, truncation=True, max_length=max_source_length)
        labels = tokenizer(text_target=targets, truncation=True, max_length=max_target_length)
        model_inputs["labels"] = labels["input_ids"]
        if model_inputs.encodings is not None and labels.encodings is not None:
            # A fast tokenizer keeps what truncation cut off in `overflowing`: counting costs no second pass.
            truncated = [bool(s.overflowing) or bool(t.overflowing)
                         for s, t in zip(model_inputs.encodings, labels.encodings)]
        else:  # e.g. MarianTokenizer (SentencePiece, Python): measure the untruncated lengths
            full_sources = tokenizer(sources)["input_ids"]
            full_targets = tokenizer(text_target=targets)["input_ids"]
            truncated = [len(s) > max_source_length or len(t) > max_target_length
                         for s, t in zip(full_sources, full_targets)]
        model_inputs["truncated"] = truncated
        return dict(model_inputs)

    tokenized = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
    truncated = int(sum(tokenized["truncated"]))
    return tokenized.remove_columns("truncated"), {"truncated": truncated}


def token_lengths(tokenized: datasets.Dataset) -> list[int]:
    """Per example, the longer of its source and target lengths: what :class:`TokenBatchSampler` packs by.

    Args:
        tokenized: rows with ``input_ids`` and ``labels`` (as :func:`tokenize_pairs` returns).
    """
    return [max(len(s), len(t)) for s, t in zip(tokenized["input_ids"], tokenized["labels"])]


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
# Marian's order for the first ids: </s> = 0, <unk> = 1; <pad> follows (Marian puts it last).
_SPECIAL_TOKENS = [EOS_TOKEN, UNK_TOKEN, PAD_TOKEN]
_METASPACE = "\u2581"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, *, model: str = "bpe", min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Trains a joint source+target subword tokenizer with the ``tokenizers`` library.

    NFKC normalization; a Metaspace pre-tokenizer and decoder (``▁`` marks a word start, so decoding
    restores single spaces exactly); ``</s>`` appended to every sequence; ``</s>``, ``<unk>``, ``<pad>``
    get ids 0, 1, 2.

    Args:
        texts: the training text, source and target sentences together (iterated once).
        vocab_size: the vocabulary size to aim for, special tokens included (BPE stops earlier when the
            text has no more merges).
        model: ``"bpe"`` or ``"unigram"`` (SentencePiece's unigram LM).
        min_frequency: BPE only: the fewest occurrences for a merge.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``pad_token``, ``eos_token`` and ``unk_token`` set.
    """
    if model not in ("bpe", "unigram"):
        raise DataError(f"model={model!r} is not supported; accepted: ['bpe', 'unigram']")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(_SPECIAL_TOKENS):
        raise DataError(f"vocab_size={vocab_size!r} must be an integer > {len(_SPECIAL_TOKENS)}")
    if model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=_SPECIAL_TOKENS, show_progress=False)
    else:
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL_TOKENS,
                                          unk_token=UNK_TOKEN, show_progress=False)
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN,
                                   unk_token=UNK_TOKEN)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The token ids an ``RSkipConfig`` needs, Marian-style (decoding starts from ``<pad>``).

    Args:
        tokenizer: a tokenizer with ``pad_token`` and ``eos_token`` set.
    """
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise DataError("the tokenizer needs pad_token and eos_token set")
    return dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=tokenizer.eos_token_id,
                vocab_size=len(tokenizer))



__all__ = [
    "DataError", "SPLITS", "clean_pairs", "find_parallel_side", "load_parallel_file", "load_translation_datasets",
    "special_token_ids", "token_lengths", "tokenize_pairs", "train_tokenizer", "translation_dataset",
]
