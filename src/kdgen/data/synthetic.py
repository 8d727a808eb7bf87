"""The built-in default data set: CIFAR-shaped images of 100 fine classes in 20 coarse classes.

It needs no download and is generated deterministically from a seed, in a second or two.

How it is generated
-------------------
1. Each of the 20 coarse classes gets a *coarse prototype*: a smooth random colour
   pattern, Gaussian noise of shape (3, 4, 4) upsampled bicubically to 32x32.
2. Each of the 5 fine classes of a coarse class gets a *fine prototype*: its coarse
   prototype plus ``fine_scale`` times a fine pattern of its own (Gaussian noise of shape
   (3, 8, 8), upsampled). Siblings therefore share most of their appearance, and a
   network's confusions fall mostly inside the coarse class: the inter-class similarity
   that a tolerant teacher is meant to expose.
3. Each image is its fine prototype, translated by up to ``max_shift`` pixels (circularly),
   flipped left-right with probability 1/2, scaled in contrast by a factor from
   U(0.7, 1.3), shifted in brightness by N(0, 0.2), plus pixel noise N(0, ``noise``)
   and a smooth per-image nuisance pattern (a (3, 4, 4) field, upsampled, times
   ``nuisance``) that a network must learn to ignore.
4. Values are squashed to [0, 255] with a sigmoid and stored as uint8.

The defaults make the fine task hard enough that small networks stay well below 100%
top-1 while the coarse class stays easy to recognise. Every number above is an argument
of :func:`make_synthetic`, so users can make the task easier or harder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdgen.data.base import ImageDataset
from kdgen.data.split import ImageSplit

NUM_COARSE = 20
FINE_PER_COARSE = 5
IMAGE_SIZE = 32


def _smooth_noise(
    count: int, grid: int, generator: torch.Generator, size: int = IMAGE_SIZE
) -> torch.Tensor:
    """``count`` smooth random fields of shape (3, size, size) with unit-scale values."""
    coarse = torch.randn(count, 3, grid, grid, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def _fine_prototypes(generator: torch.Generator, fine_scale: float) -> torch.Tensor:
    coarse = _smooth_noise(NUM_COARSE, 4, generator)
    fine = _smooth_noise(NUM_COARSE * FINE_PER_COARSE, 8, generator)
    return coarse.repeat_interleave(FINE_PER_COARSE, dim=0) + fine_scale * fine


def _render(
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    *,
    max_shift: int,
    noise: float,
    nuisance: float,
) -> torch.Tensor:
    """Draw one image per label from its class prototype, all in batched tensor ops."""
    count = labels.numel()
    images = prototypes[labels]
    span = 2 * max_shift + 1
    shifts = torch.randint(0, span, (count, 2), generator=generator) - max_shift
    rows = (torch.arange(IMAGE_SIZE)[None, :] - shifts[:, :1]) % IMAGE_SIZE
    cols = (torch.arange(IMAGE_SIZE)[None, :] - shifts[:, 1:]) % IMAGE_SIZE
    batch = torch.arange(count)[:, None, None]
    images = images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    images = images.permute(0, 3, 1, 2)
    flip = torch.rand(count, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    contrast = 0.7 + 0.6 * torch.rand(count, 1, 1, 1, generator=generator)
    brightness = 0.2 * torch.randn(count, 1, 1, 1, generator=generator)
    images = contrast * images + brightness
    images = images + nuisance * _smooth_noise(count, 4, generator)
    images = images + noise * torch.randn(images.shape, generator=generator)
    return (torch.sigmoid(images) * 255).round().to(torch.uint8)


def _balanced_labels(per_class: int, generator: torch.Generator) -> torch.Tensor:
    labels = torch.arange(NUM_COARSE * FINE_PER_COARSE).repeat(per_class)
    return labels[torch.randperm(labels.numel(), generator=generator)]


def make_synthetic(
    train_per_class: int = 100,
    test_per_class: int = 20,
    seed: int = 0,
    *,
    fine_scale: float = 0.6,
    max_shift: int = 4,
    noise: float = 0.5,
    nuisance: float = 0.6,
) -> ImageDataset:
    """Generate the synthetic data set; the same arguments always give the same tensors."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = _fine_prototypes(generator, fine_scale)
    render = {"max_shift": max_shift, "noise": noise, "nuisance": nuisance}
    splits = []
    for per_class in (train_per_class, test_per_class):
        labels = _balanced_labels(per_class, generator)
        splits.append(ImageSplit(_render(prototypes, labels, generator, **render), labels))
    num_classes = NUM_COARSE * FINE_PER_COARSE
    train_images = splits[0].images.float() / 255
    return ImageDataset(
        name="synthetic",
        train=splits[0],
        test=splits[1],
        class_names=[
            f"c{c // FINE_PER_COARSE:02d}_f{c % FINE_PER_COARSE}" for c in range(num_classes)
        ],
        coarse_of_fine=[c // FINE_PER_COARSE for c in range(num_classes)],
        coarse_names=[f"c{c:02d}" for c in range(NUM_COARSE)],
        mean=tuple(train_images.mean(dim=(0, 2, 3)).tolist()),
        std=tuple(train_images.std(dim=(0, 2, 3)).tolist()),
    )
