"""Batches of any map-style torch ``Dataset`` read by ``DataLoader`` workers, moved to the
device: the loader of the sources that do not hold their data as tensors (``imagefolder``,
:class:`~kdgen.data.torch_data.TorchData`).

Like :class:`~kdgen.data.tensors.DeviceLoader`, an epoch is a pure function of (seed,
generation, epoch): the order is a seeded permutation, and every item is read with torch's
generator seeded by (seed, generation, epoch, item), so the random transforms of a
dataset (torchvision's draw from that generator) give the same images in a resumed or a
sharded run as in an uninterrupted single-process one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdgen.errors import DataError
from kdgen.seeding import derive_seed, seeded_generator

_SEED_MASK = 0x7FFF_FFFF_FFFF_FFFF


def shard_batches(
    count: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[list[int]]:
    """The batches of indices one rank reads in one epoch.

    The order is a seeded permutation when ``shuffle`` (partial last global batch dropped),
    else ``0..count-1`` (kept). Each global batch of ``batch_size * world`` indices is cut
    into ``world`` consecutive slices, rank ``r`` taking slice ``r``: the ranks' batches
    together are exactly the single-process batches of ``batch_size * world`` (as
    :class:`~kdgen.data.tensors.DeviceLoader` does). Empty trailing slices are left out.
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise DataError(f"shard=({rank}, {world}) needs 0 <= rank < world")
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    global_batch = batch_size * world
    steps = count // global_batch if shuffle else -(-count // global_batch)
    batches = []
    for step in range(steps):
        start = step * global_batch + rank * batch_size
        local = order[start : min(start + batch_size, (step + 1) * global_batch)]
        if len(local):
            batches.append(local.tolist())
    return batches


class EpochBatches:
    """A batch sampler: this rank's batches of one epoch, from a permutation that is a
    pure function of (seed, generation, epoch) when ``shuffle``; set :attr:`epoch` first.
    It yields ``(item seed, index)`` keys for :class:`SeededItems`."""

    def __init__(
        self,
        count: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        generation: int,
        shard: tuple[int, int],
    ) -> None:
        self.count, self.batch_size, self.shuffle = count, batch_size, shuffle
        self.seed, self.generation, self.shard = seed, generation, shard
        self.epoch = 0
        self._cache: tuple[tuple[int, int], list[list[int]]] | None = None

    def batches(self) -> list[list[int]]:
        """This rank's batches of dataset indices in the current epoch."""
        key = (self.generation, self.epoch)
        if self._cache is None or self._cache[0] != key:
            generator = seeded_generator("stream", self.seed, self.generation, self.epoch)
            batches = shard_batches(
                self.count,
                self.batch_size,
                shuffle=self.shuffle,
                generator=generator,
                shard=self.shard,
            )
            self._cache = (key, batches)
        return self._cache[1]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # Item i of the epoch reads with seed base + i: one derived seed per epoch, and an
        # item's seed depends neither on its position nor on the rank that reads it.
        base = derive_seed("items", self.seed, self.generation, self.epoch)
        for batch in self.batches():
            yield [((base + index) & _SEED_MASK, index) for index in batch]

    def __len__(self) -> int:
        return len(self.batches())


class SeededItems(Dataset):
    """``dataset[index]`` read with torch's generator seeded by the key's item seed, the
    caller's generator state left as it was (this also holds in DataLoader workers)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone: torch.manual_seed would queue seeds for every
            # accelerator too, a slow call per item.
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


class DatasetLoader:
    """Batches of a map-style dataset read by DataLoader workers, moved to ``device``.

    The interface of :class:`~kdgen.data.tensors.DeviceLoader`: ``device``,
    :meth:`set_epoch`, :meth:`set_generation`, ``len()`` and iteration over
    ``(inputs, labels)`` (whatever the dataset's items collate to, on the device; 4-D
    inputs in channels_last layout when asked). With ``shuffle`` the order of an epoch is a
    pure function of (seed, generation, epoch, shard) via
    :func:`kdgen.seeding.seeded_generator`, and the partial last batch is dropped; every
    item is read under its own seed (see :class:`EpochBatches`). With ``shard=(rank,
    world)`` each rank reads its share (see :func:`shard_batches`).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        shuffle: bool = False,
        seed: int = 0,
        generation: int = 0,
        channels_last: bool = True,
        workers: int = 4,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be at least 1")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.channels_last = channels_last
        self.sampler = EpochBatches(
            len(dataset),  # type: ignore[arg-type]
            batch_size,
            shuffle=shuffle,
            seed=seed,
            generation=generation,
            shard=shard,
        )
        self.loader = DataLoader(
            SeededItems(dataset),
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            # Its own generator: otherwise every epoch's iterator draws a seed from torch's
            # global one, the stream of dropout and the like (items are seeded anyway).
            generator=torch.Generator().manual_seed(seed),
        )

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def set_generation(self, generation: int) -> None:
        """Draw the stream (order) of this generation; see ``DeviceLoader.set_generation``."""
        self.sampler.generation = generation

    def batches(self) -> list[list[int]]:
        """This rank's batches of dataset indices for the current epoch."""
        return self.sampler.batches()

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for inputs, labels in self.loader:
                inputs = inputs.to(self.device, non_blocking=True)
                if self.channels_last and inputs.dim() == 4:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                yield inputs, labels.to(self.device, non_blocking=True)
        except DataError as error:  # from a worker: keep the original one-line message
            self.close()
            raise DataError(_last_line(str(error))) from None

    def close(self) -> None:
        """Stop the persistent workers now (they stop by themselves when the loader is
        garbage collected); the next iteration starts new ones."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None


def _last_line(message: str) -> str:
    line = message.strip().splitlines()[-1] if message.strip() else message
    prefix = f"{DataError.__module__}.{DataError.__name__}: "
    return line.removeprefix(prefix)
