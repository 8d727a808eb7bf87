"""Batches drawn and augmented on the device, with no per-image Python work.

The whole split lives on the device as uint8. An epoch is one seeded permutation; each
batch is gathered by index, randomly cropped (zero padding, as torchvision's
``RandomCrop(padding=...)``) and flipped with batched tensor ops, then converted to
float, normalised and put in channels_last layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdgen.data.split import ImageSplit
from kdgen.seeding import derive_seed, seeded_generator


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation switches."""

    crop_padding: int = 4
    flip: bool = True


def epoch_generator(
    seed: int, generation: int, epoch: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator of one epoch: a pure function of (seed, generation, epoch), so a
    resumed run draws exactly the batches the uninterrupted run would have drawn. It lives
    on the data's device, so drawing random numbers never waits for the host."""
    device = torch.device(device)
    if device.type == "cpu":
        return seeded_generator("stream", seed, generation, epoch)
    return torch.Generator(device=device).manual_seed(
        derive_seed("stream", seed, generation, epoch)
    )


def crop_offsets(
    count: int, padding: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Random (row, column) offsets in [0, 2 * padding] for ``count`` images."""
    return torch.randint(0, 2 * padding + 1, (count, 2), generator=generator, device=device)


def crop(images: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Crop each image of a (N, C, H, W) batch at its offset in the zero-padded image."""
    count, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(height, device=images.device)
    cols = offsets[:, 1:] + torch.arange(width, device=images.device)
    batch = torch.arange(count, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def flip_mask(count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(count, generator=generator, device=device) < 0.5


def flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip left-right the images of a batch where ``mask`` is true."""
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


class DeviceLoader:
    """Iterates over (images, labels) batches of one split, already on the device.

    ``shuffle=True`` draws a fresh permutation each epoch from :func:`epoch_generator`;
    set the epoch with :meth:`set_epoch` before iterating. Shuffled loading drops the
    last partial batch (as the published training loops do); evaluation keeps it.
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device | str = "cpu",
        *,
        shuffle: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        generation: int = 0,
        channels_last: bool = True,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment if augment is not None else Augment(0, False)
        self.seed, self.generation, self.epoch = seed, generation, 0
        self.channels_last = channels_last
        self.rank, self.world_size = shard
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape) * 255
        self.inv_std = 1 / (torch.tensor(std, device=self.device).view(shape) * 255)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_generation(self, generation: int) -> None:
        """Draw the stream of this generation: every generation has its own order, crops
        and flips, as separate training runs would."""
        self.generation = generation

    def __len__(self) -> int:
        count = len(self.labels)
        if self.shuffle:
            return count // (self.batch_size * self.world_size)
        return -(-count // (self.batch_size * self.world_size))

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        count = len(self.labels)
        if self.shuffle:
            return torch.randperm(count, generator=generator, device=generator.device).to(
                self.device
            )
        return torch.arange(count, device=self.device)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        images = (images.float() - self.mean) * self.inv_std
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = epoch_generator(self.seed, self.generation, self.epoch, self.device)
        order = self._order(generator)
        global_batch = self.batch_size * self.world_size
        local = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        padding = self.augment.crop_padding if self.shuffle else 0
        flips = self.shuffle and self.augment.flip
        for step in range(len(self)):
            index = order[step * global_batch : (step + 1) * global_batch]
            # Random numbers are drawn for the whole global batch and sliced, so every rank
            # draws the same ones and the ranks' batches together are exactly the
            # single-process batch of batch_size * world_size.
            offsets = crop_offsets(len(index), padding, generator, self.device) if padding else None
            mask = flip_mask(len(index), generator, self.device) if flips else None
            index = index[local]
            images = self.images[index]
            if offsets is not None:
                images = crop(images, padding, offsets[local])
            if mask is not None:
                images = flip(images, mask[local])
            yield self.normalize(images), self.labels[index]
