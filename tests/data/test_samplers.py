"""Tests of hf_rskip.data.samplers: token-bounded batches."""

from __future__ import annotations

import random

import pytest
from torch.utils.data import DataLoader

from hf_rskip.data import DataError, TokenBatchSampler


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
