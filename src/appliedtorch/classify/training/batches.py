"""Batches of an in-memory image dataset, made on the training device (airbench's loader habit).

    batches = Batches(images, labels, 64, Normalizer(mean, std), shuffle=generator)
    for images, labels in batches:  # float32 (B, C, H, W) normalised, int64 (B,)
        ...

The tutorial feeds each sample through PIL transforms in a DataLoader; that per-sample Python
work, not the arithmetic, is what makes its MNIST epoch slow. Here the whole dataset sits on the
device as uint8 tensors; each batch is gathered with one index, augmented (crop + flip) with one
gather for the whole batch and normalised with one fused multiply-add. Without augmentation the
whole set is normalised once instead, and a batch is a gather of floats. Under torchrun each
process iterates over its shard (`World.shard` of every epoch's permutation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from appliedtorch.classify.runs.distributed import SINGLE, World
from appliedtorch.data.datasets import DATASETS_BY_NAME

# The largest float32 copy of a dataset that `Batches` normalises once, up front (4 bytes a pixel:
# MNIST's 60,000 training images take 188 MB); a larger set is normalised batch by batch.
NORMALIZE_ONCE_MAX_BYTES = 1 << 30

# Per-channel (mean, std) of the pixel values in [0, 1], by dataset: the dataset table's.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    name: (d.mean, d.std) for name, d in DATASETS_BY_NAME.items()
}


class Normalizer:
    """uint8 (B, C, H, W) in [0, 255] -> float32 (x / 255 - mean) / std, in one fused multiply-add."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.device = torch.device(device)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.full: tuple[torch.Size, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(dtype=torch.float32, memory_format=self.memory_format)
        shift, scale = self._constants(x.shape[2:])
        return torch.addcmul(shift, x, scale)

    def _constants(self, size: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """shift and scale as (1, C, H, W) tensors in the batches' memory format, made once per
        image size: broadcast from (1, C, 1, 1) against a channels_last batch, the multiply-add
        ran an inner loop of C elements (1.6x the time of this one). Same values, same bits."""
        if self.full is None or self.full[0] != size:
            full = [
                t.expand(1, -1, *size).contiguous(memory_format=self.memory_format)
                for t in (self.shift, self.scale)
            ]
            self.full = (size, *full)
        return self.full[1], self.full[2]


def random_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    padding: int = 4,
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip, per sample, for a whole batch.

    Same distribution as torchvision's per-sample RandomCrop(size, padding) followed by
    RandomHorizontalFlip(flip_p): each image is shifted by (dy, dx) drawn uniformly from
    [-padding, padding]^2 with zero fill, then mirrored with probability flip_p. Works on any
    dtype (use it on uint8, before normalising, so the fill is a black pixel as in torchvision).
    """
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p), zero fill
    top = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device=device)
    flip = torch.rand((b, 1), generator=generator, device=device) < flip_p
    rows = top + torch.arange(h, device=device)  # (B, H)
    cols = torch.arange(w, device=device)
    cols = left + torch.where(flip, w - 1 - cols, cols)  # (B, W): a flip reads columns backwards
    # One gather per image plane: the (B, H, W) offsets into the padded plane serve every channel.
    # Indexing with four broadcast index tensors (B, C, H, W) did the same at 3.7x the cost.
    offsets = rows.unsqueeze(2) * (w + 2 * padding) + cols.unsqueeze(1)  # (B, H, W)
    planes = padded.reshape(b, c, -1)  # (B, C, (H+2p)(W+2p))
    return planes.gather(2, offsets.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def _take(tensor: torch.Tensor, at: slice | torch.Tensor) -> torch.Tensor:
    """The rows `at` of `tensor`, as `tensor[at]` gives them: a view for a slice; for indices into
    a row-major tensor, index_select, the same copy without advanced indexing's general machinery
    (a share of the MLP's step). index_select returns row-major strides, so a tensor with others
    (channels_last) is indexed as before, its batches keeping its strides."""
    if isinstance(at, slice) or tensor.stride() != _row_major(tensor.shape):
        return tensor[at]
    return tensor.index_select(0, at)


def _row_major(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


class Batches:
    """This process's batches of uint8 `images` and their `labels`, normalised on the device.

    With `shuffle` (a generator), every pass draws a new permutation of all samples and takes
    this process's shard of it; without, the samples go in order (under torchrun: whole batches
    dealt in turn, see `World.strided_batches`). With `augment` (a generator), each batch is
    randomly cropped and flipped before normalising. The last batch may be short, as in a
    DataLoader (with `drop_single`, never a single sample). The data moves to the normaliser's
    device once, here. Without `augment`, every epoch would normalise the same pixels again: they
    are normalised once, here (the same elementwise operation on the same values, so the same
    bits), unless the float copy would exceed NORMALIZE_ONCE_MAX_BYTES.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        normalize: Normalizer,
        *,
        shuffle: torch.Generator | None = None,
        augment: torch.Generator | None = None,
        world: World = SINGLE,
        drop_single: bool = False,
    ):
        self.device = normalize.device
        self.images = images.to(self.device)  # (N, C, H, W) uint8
        self.labels = labels.to(self.device)  # (N,) int64
        self.batch_size, self.normalize = batch_size, normalize
        self.shuffle, self.augment, self.world = shuffle, augment, world
        self.normalized = (
            normalize(self.images)
            if augment is None and 4 * self.images.numel() <= NORMALIZE_ONCE_MAX_BYTES
            else None
        )
        n = len(self.images)
        # In order, one process: plain slices (no gather). Under torchrun: this process's rows.
        self.rows = (
            None if shuffle or not world.distributed else world.strided_batches(n, batch_size)
        )
        self.samples = (
            world.shard_size(n) if shuffle else (n if self.rows is None else len(self.rows))
        )
        # BatchNorm cannot train on a batch of one sample (no variance): with `drop_single` a
        # last batch of one is left out of the pass (the same on every process: equal shards).
        if drop_single and self.samples > 1 and self.samples % batch_size == 1:
            self.samples -= 1

    def __len__(self) -> int:
        return math.ceil(self.samples / self.batch_size)

    def sizes(self) -> torch.Tensor:
        """The number of samples in each batch, as float32 on the device (the last may be short)."""
        sizes = torch.full((len(self),), float(self.batch_size), device=self.device)
        sizes[-1] = self.samples - (len(self) - 1) * self.batch_size
        return sizes

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = self.rows
        if self.shuffle is not None:
            n = len(self.images)
            rows = self.world.shard(torch.randperm(n, generator=self.shuffle, device=self.device))
        for start in range(0, self.samples, self.batch_size):
            at: slice | torch.Tensor = slice(start, start + self.batch_size)
            if rows is not None:
                at = rows[at].to(self.device)
            if self.normalized is not None:
                yield _take(self.normalized, at), _take(self.labels, at)  # (B, C, H, W) float32
                continue
            images = _take(self.images, at)  # (B, C, H, W) uint8
            if self.augment is not None:
                images = random_crop_flip(images, self.augment)
            yield self.normalize(images), _take(self.labels, at)
