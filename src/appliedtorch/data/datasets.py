"""The datasets the project knows by name: one table entry each, in an upstream file format.

    python stages/download.py --params params.yaml --dataset fashion-mnist --out data/raw/fashion-mnist

An entry says where upstream keeps the files (torchvision's URLs and md5 sums), what the files
decompress to (so a recompressed copy, such as Debian's, verifies by content), the class names,
sizes, image shape, normalisation and the synthetic stand-in. Adding a dataset in the MNIST IDX
or CIFAR-10 pickle format is one more entry in DATASETS_BY_NAME.

    >>> DATASETS_BY_NAME["fashion-mnist"].classes[0]
    'T-shirt/top'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliedtorch.core.errors import DataError

# Where the operating system's packages put datasets (Debian's dataset-fashion-mnist installs
# /usr/share/datasets/fashion-mnist/*.gz). A module attribute so tests can point it elsewhere.
OS_DATASETS = Path("/usr/share/datasets")

_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MNIST_CLASSES = [f"{i} - {word}" for i, word in enumerate(_DIGITS)]  # torchvision's names
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


@dataclass(frozen=True)
class UpstreamFile:
    """One upstream file: its name, torchvision's md5 of it, and the md5 of what it decompresses
    to when known (a copy recompressed by someone else still verifies by its content)."""

    name: str
    md5: str
    content_md5: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset by name: upstream files, on-disk layout, classes, sizes and stand-in."""

    name: str
    title: str  # as people write it: MNIST, Fashion-MNIST, CIFAR-10
    format: str  # "idx" (MNIST's gzipped IDX files) or "cifar" (CIFAR-10's pickled batches)
    bases: tuple[str, ...]  # upstream base URLs, tried in order
    files: tuple[UpstreamFile, ...]
    folder: str  # where the extracted files live under data/raw/<name> (torchvision's layout)
    classes: tuple[str, ...]
    sizes: tuple[int, int]  # upstream (train, test) images
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per-channel normalisation of x / 255
    std: tuple[float, ...]
    synthetic: str  # the stand-in's generator: "mnist" or "cifar10" (appliedtorch.data.synthetic)
    synthetic_id: int  # keeps each stand-in's templates apart from the others'
    os_package: str | None = None  # the OS package that installs it under OS_DATASETS/<name>

    @property
    def os_dir(self) -> Path:
        """Where an OS package would have put the upstream files."""
        return OS_DATASETS / self.name

    def upstream_file(self, fname: str) -> UpstreamFile:
        """The table's record of `fname`."""
        return next(f for f in self.files if f.name == fname)


_S3_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
DATASETS_BY_NAME: dict[str, Dataset] = {
    "mnist": Dataset(
        name="mnist",
        title="MNIST",
        format="idx",
        bases=(_S3_MNIST, "http://yann.lecun.com/exdb/mnist/"),
        files=(
            UpstreamFile(MNIST_FILES[0], "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            UpstreamFile(MNIST_FILES[1], "d53e105ee54ea40749a09fcbcd1e9432"),
            UpstreamFile(MNIST_FILES[2], "9fb629c4189551a2d022fa330f9573f3"),
            UpstreamFile(MNIST_FILES[3], "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        folder="MNIST/raw",
        classes=tuple(MNIST_CLASSES),
        sizes=(60000, 10000),
        shape=(1, 28, 28),
        mean=(0.5,),  # the tutorial's transform, not the data's statistics
        std=(0.5,),
        synthetic="mnist",
        synthetic_id=1,
    ),
    "fashion-mnist": Dataset(
        name="fashion-mnist",
        title="Fashion-MNIST",
        format="idx",
        bases=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        # content_md5: of the decompressed upstream files (as Debian's package ships them).
        files=(
            UpstreamFile(
                MNIST_FILES[0],
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            ),
            UpstreamFile(
                MNIST_FILES[1],
                "25c81989df183df01b3e8a0aad5dffbe",
                "9018921c3c673c538a1fc5bad174d6f9",
            ),
            UpstreamFile(
                MNIST_FILES[2],
                "bef4ecab320f06d8554ea6380940ec79",
                "8181f5470baa50b63fa0f6fddb340f0a",
            ),
            UpstreamFile(
                MNIST_FILES[3],
                "bb300cfdad3c16e7a12a480ee83cd310",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
        ),
        folder="FashionMNIST/raw",
        classes=tuple(FASHION_MNIST_CLASSES),
        sizes=(60000, 10000),
        shape=(1, 28, 28),
        mean=(0.2860,),  # the training images' statistics
        std=(0.3530,),
        synthetic="mnist",
        synthetic_id=3,
        os_package="dataset-fashion-mnist",
    ),
    "cifar10": Dataset(
        name="cifar10",
        title="CIFAR-10",
        format="cifar",
        bases=("https://www.cs.toronto.edu/~kriz/",),
        files=(UpstreamFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        folder=CIFAR10_FOLDER,
        classes=tuple(CIFAR10_CLASSES),
        sizes=(50000, 10000),
        shape=(3, 32, 32),
        # The training set's per-channel pixel std; the (0.2023, 0.1994, 0.2010) found in many
        # tutorials is the std of per-image means, not of pixels.
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        synthetic="cifar10",
        synthetic_id=2,
    ),
}
DATASETS = tuple(DATASETS_BY_NAME)


def dataset(name: str) -> Dataset:
    """The table entry for `name`; DataError naming the choices if there is none."""
    try:
        return DATASETS_BY_NAME[name]
    except (KeyError, TypeError):
        choices = ", ".join(DATASETS)
        raise DataError(f"unknown dataset '{str(name)[:40]}' (choose {choices})") from None
