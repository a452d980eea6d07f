"""In-memory datasets and batch iterators: small image sets fit in RAM, and slicing tensors is far faster than
per-sample DataLoader indexing on 2 cores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class TensorLoader:
    """Iterable of (inputs, labels) batches over tensors held in memory; reshuffled each pass when `shuffle`.

    Like DataLoader's RandomSampler, each shuffled pass draws its seed from torch's global generator, so
    `torch.manual_seed` before a fine-tune fixes its data order and augmentation whatever ran before it.
    `seed` fixes `subset`.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    batch_size: int = 128
    shuffle: bool = False
    augment: Augment | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"inputs ({len(self.inputs)}) and labels ({len(self.labels)}) differ in length")

    def __len__(self) -> int:
        return (len(self.inputs) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.inputs)
        generator = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ()).item()))
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            batch = self.inputs[index]
            if self.augment is not None:
                batch = self.augment(batch, generator)
            yield batch, self.labels[index]

    def subset(self, count: int) -> "TensorLoader":
        """The first `count` samples (after a seeded shuffle), e.g. for batch-norm recalibration."""
        index = torch.randperm(len(self.inputs), generator=torch.Generator().manual_seed(self.seed))[:count]
        return TensorLoader(self.inputs[index], self.labels[index], self.batch_size, False, None, self.seed)


def split_train_val(inputs: torch.Tensor, labels: torch.Tensor, val_size: int, seed: int
                    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Carve a validation split out of the training set with a fixed seed."""
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    return (inputs[train], labels[train]), (inputs[val], labels[val])


def flip_and_shift(max_shift: int) -> Augment:
    """Random horizontal flip and a random translation of up to `max_shift` pixels (zero padded), per sample."""

    def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = batch.shape
        flip = torch.rand(n, generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        padded = torch.nn.functional.pad(batch, (max_shift,) * 4)
        dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, batch.shape[1], h,
                                                                                  w + 2 * max_shift)
        shifted = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, batch.shape[1], h, w)
        return shifted.gather(3, cols)

    return augment
