"""Batch samplers that no library provides: fairseq-style batches bounded by a number of tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .errors import DataError

class TokenBatchSampler(Sampler[list[int]]):
    """Batches of example indices whose padded size (longest length × batch size) fits ``max_tokens``.

    Built as fairseq does. When shuffling: the indices are permuted (by ``seed``), cut into buckets of about
    ``bucket_size_multiplier`` batches, each bucket is sorted by length (so a batch wastes little padding)
    and cut greedily into batches; every epoch then visits these batches in its own order (by ``seed`` and
    the epoch). As in fairseq the batches themselves stay the same across epochs, so ``len()`` is the same
    every epoch (a schedule's total steps and a resume's position are exact); ``rebucket_each_epoch=True``
    redraws the buckets every epoch instead (more varied batches, but ``len()`` may then change by a few
    batches from epoch to epoch). Without shuffling, all indices are sorted by length (ties by index) and
    batches come shortest first, for evaluation.

    An example longer than ``max_tokens`` gets a batch of its own rather than an error, so a training run
    never stops on one long line (truncate in :func:`tokenize_pairs` to bound it); ``num_oversized`` counts them.

    The batches depend only on ``lengths``, ``max_tokens``, ``seed`` and the epoch (:meth:`set_epoch`), so
    every process of a distributed run builds the same list, and ``accelerate``'s ``prepare`` (which deals
    the batches of a batch sampler round-robin to the processes) gives each process distinct batches.
    ``accelerate``'s data loader calls :meth:`set_epoch` itself (through the ``sampler`` attribute when sharded).

    Args:
        lengths: per example, the length to pack by (see :func:`token_lengths`).
        max_tokens: the most tokens (padding included) a batch may hold.
        shuffle: shuffle (training) or not (evaluation).
        seed: the seed of the shuffle.
        bucket_size_multiplier: a bucket holds about this many batches' worth of examples.
        rebucket_each_epoch: redraw the buckets (hence the batches) every epoch, not only their order.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, shuffle: bool = True, seed: int = 0,
                 bucket_size_multiplier: int = 100, rebucket_each_epoch: bool = False) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise DataError(f"max_tokens={max_tokens!r} must be an integer >= 1")
        if isinstance(bucket_size_multiplier, bool) or not isinstance(bucket_size_multiplier, int) \
                or bucket_size_multiplier < 1:
            raise DataError(f"bucket_size_multiplier={bucket_size_multiplier!r} must be an integer >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1 or (self.lengths < 1).any():
            raise DataError("lengths must be a sequence of integers >= 1")
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_size_multiplier = bucket_size_multiplier
        self.rebucket_each_epoch = rebucket_each_epoch
        self.epoch = 0
        self.num_oversized = int((self.lengths > max_tokens).sum())
        # accelerate reaches a sharded batch sampler's epoch through `batch_sampler.batch_sampler.sampler`.
        self.sampler = self
        self._fixed: list[list[int]] | None = None
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose shuffle the next iteration uses."""
        self.epoch = int(epoch)

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        """Cuts indices (already in length order) greedily into batches that fit ``max_tokens``."""
        batches, batch, longest = [], [], 0
        for index in order.tolist():
            length = int(self.lengths[index])
            if batch and max(longest, length) * (len(batch) + 1) > self.max_tokens:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(index)
            longest = max(longest, length)
        if batch:
            batches.append(batch)
        return batches

    def _bucketed(self, rng: np.random.Generator) -> list[list[int]]:
        permutation = rng.permutation(len(self.lengths))
        mean_length = float(self.lengths.mean()) if len(self.lengths) else 1.0
        bucket = self.bucket_size_multiplier * max(1, int(self.max_tokens // mean_length))
        batches = []
        for start in range(0, len(permutation), bucket):
            chunk = permutation[start:start + bucket]
            # a stable sort: equal lengths keep their random order
            batches.extend(self._pack(chunk[np.argsort(self.lengths[chunk], kind="stable")]))
        return batches

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches of an epoch (default: the current one), in iteration order."""
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            if self._fixed is None:
                self._fixed = self._pack(np.lexsort((np.arange(len(self.lengths)), self.lengths)))
            return self._fixed
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.rebucket_each_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches = self._bucketed(rng)
        else:
            if self._fixed is None:
                self._fixed = self._bucketed(np.random.default_rng([self.seed]))
            batches, rng = self._fixed, np.random.default_rng([self.seed, epoch])
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        return len(self.batches())



__all__ = ["TokenBatchSampler"]
