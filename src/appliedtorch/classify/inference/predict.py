"""Classify image files with a trained classifier.

    appliedtorch-predict --export-test-image data/raw/mnist digit.png   # an image to try
    appliedtorch-predict --model models:/mnist-mlp@champion digit.png
    appliedtorch-predict --model models/cnn.pt --top 3 cat.png ship.jpg

Prints one tab-separated line per image: the path, then class and probability for each of the
`--top` most likely classes. An image of another kind than the model's training data (grey for a
colour model, another size) is converted, with a `warning:` line on stderr saying so.

`--model` takes a registered model (`models:/name@alias` or `models:/name/version`), a run's model
(`runs:/<run_id>/model`) or a model file written by a training stage (`models/mlp.pt`). Images
are converted to the model's input shape: grayscale 28x28 for MNIST (white digit on black, as in
MNIST), RGB 32x32 for CIFAR-10. All three are the same model, a `PixelClassifier`: it takes those
uint8 pixels, normalises them as in training and returns probabilities, as `mlflow models serve`
does for the same pixels. The model's metadata is checked before any network is built
(`appliedtorch.classify.inference.metadata`): a model file is data from outside, like an image.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliedtorch.classify.inference.metadata import ModelFile, check_metadata, check_model_file
from appliedtorch.core.cli import run_stage
from appliedtorch.core.errors import AppliedTorchError


@dataclass(frozen=True)
class Classifier:
    """A model plus what it needs to turn image files into inputs."""

    model: Any  # callable: uint8 (B, C, H, W) -> probabilities (B, K)
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)


def load_classifier(uri: str) -> Classifier:
    """Load a model file or an MLflow model URI, with its class names and input shape; the
    metadata is checked (`classify.metadata`) before any network is built."""
    if "://" not in uri and not uri.startswith(("models:/", "runs:/")):
        model, meta = load_model_file(uri)
    else:
        from appliedtorch.tracking import load_logged_model

        def check(raw: dict[str, Any]) -> None:  # runs before MLflow loads the model
            _check_pixels(raw, f"model '{uri}'", "model")
            check_metadata(raw, f"model '{uri}'")

        model, raw = load_logged_model(uri, check=check)
        meta = check_metadata(raw, f"model '{uri}'")
    return Classifier(model=model, classes=list(meta.classes), input_shape=tuple(meta.input_shape))  # type: ignore[arg-type]


def load_model_file(path: str | Path) -> tuple[Any, ModelFile]:
    """The pixel classifier in a model file, in eval mode, and its checked metadata."""
    from appliedtorch.classify.nets.models import PixelClassifier, build_network, read_model_file

    check_container(path)
    saved = read_model_file(path)
    _check_pixels(saved, str(path), "model file")
    meta = check_model_file(saved, str(path))
    args = meta.model_args.model_dump(exclude_unset=True)
    net = build_network(meta.net, args, meta.members)  # an Ensemble when members > 1
    model = PixelClassifier(net, meta.mean, meta.std)
    model.load_state_dict(saved["state_dict"])  # shapes checked: cannot fail on them
    return model.eval(), meta


def check_container(path: str | Path) -> None:
    """Refuse, before torch.load reads it, a model file that is not a regular file (a FIFO would
    block for ever) or a zip with a compressed entry: torch.save stores entries uncompressed, and
    a deflated one can inflate a 1 MB file into gigabytes inside torch.load, before any check."""
    import zipfile

    if not regular_or_absent(path):
        raise AppliedTorchError(f"{path}: not a regular file (a FIFO, device or socket)")
    with contextlib.suppress(OSError, ValueError, zipfile.BadZipFile):  # torch.load says so
        with zipfile.ZipFile(path) as archive:
            packed = [i for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise AppliedTorchError(
                f"{path}: '{packed[0].filename[:60]}' is compressed, which torch.save never "
                "does (it could inflate past the file's size): not a model file a stage wrote"
            )


def regular_or_absent(path: str | Path) -> bool:
    """False for an existing path that is neither a regular file nor a directory (a FIFO,
    socket or device): opening one for reading can block for ever."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing or unreadable: the open that follows reports it
        return True
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def _check_pixels(meta: dict[str, Any], name: str, kind: str) -> None:
    """Refuse a model from before models took uint8 pixels, with the advice to retrain."""
    if meta.get("input_dtype") != "uint8":
        raise AppliedTorchError(
            f"{name}: an older {kind} (its network takes normalised floats, not pixels); "
            "run the training stage again"
        )


def read_image(path: str | Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """An image file as uint8 (C, H, W) in the model's input shape; one-line error if unusable."""
    return load_image(path, shape)[0]


def load_image(path: str | Path, shape: tuple[int, int, int]) -> tuple[torch.Tensor, str | None]:
    """An image file as uint8 (C, H, W) in the model's input shape, and what had to change to
    get there (None when it already was the model's kind); one-line error if unusable.

    16-bit images are scaled to 8 bits (not clipped to white); transparent pixels (alpha,
    or a palette's transparent index) are composited onto black, MNIST's background; an image
    over PIL's pixel limit (`Image.MAX_IMAGE_PIXELS`, a decompression-bomb guard) is refused.
    """
    import warnings

    from PIL import Image, ImageOps

    channels, height, width = shape
    if not regular_or_absent(path):
        raise AppliedTorchError(f"{path}: not a regular file (a FIFO, device or socket)")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; here both are a refusal, and no
            # other PIL warning may reach stderr beside the one-line contract.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as img:
                # Upright as every viewer shows it: the EXIF orientation a camera or editor
                # recorded (a digit stored upside down with Orientation 3 reads as another).
                img = ImageOps.exif_transpose(img)
                img = _to_8bit(img)
                note = conversion(path, img.size, _is_grey(img), shape)
                img = img.convert("L" if channels == 1 else "RGB")
                if img.size != (width, height):
                    img = img.resize((width, height), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise AppliedTorchError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise AppliedTorchError(f"{path}: a directory, not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise AppliedTorchError(
            f"{path}: more than {Image.MAX_IMAGE_PIXELS} pixels (PIL's Image.MAX_IMAGE_PIXELS), "
            "refused as a possible decompression bomb; resize it first"
        ) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
        text = " ".join(str(exc).split())[:100] or type(exc).__name__
        raise AppliedTorchError(f"{path}: not an image file PIL can read ({text})") from None
    tensor = torch.from_numpy(array.copy())
    return (tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1)), note


def _is_grey(img: Any) -> bool:
    """Whether an 8-bit image holds grey levels only: mode L, or RGB with equal channels (a grey
    JPEG saved as RGB, a grey image with alpha composited onto black)."""
    from PIL import ImageChops

    if img.mode in ("L", "1"):
        return True
    red, green, blue = img.convert("RGB").split()
    return ImageChops.difference(red, green).getbbox() is None and (
        ImageChops.difference(red, blue).getbbox() is None
    )


def conversion(
    path: str | Path, size: tuple[int, int], grey: bool, shape: tuple[int, int, int]
) -> str | None:
    """`<path> is 1x28x28 grey; the model expects 3x32x32 colour: converted to colour and
    resized` when the image is not the kind the model was trained on, else None."""
    channels, height, width = shape
    done = []
    if grey != (channels == 1):
        done.append("converted to grey" if channels == 1 else "converted to colour")
    if size != (width, height):
        done.append("resized")
    if not done:
        return None
    kind = "1x{}x{} grey" if grey else "3x{}x{} colour"
    want = f"{channels}x{height}x{width} {'grey' if channels == 1 else 'colour'}"
    return (
        f"{path} is {kind.format(size[1], size[0])}; the model expects {want}: {' and '.join(done)}"
    )


def _to_8bit(img: Any) -> Any:
    """`img` in an 8-bit mode PIL converts correctly: 16/32-bit grey scaled (PIL's own convert
    clips 16-bit values above 255 to white), transparency composited onto black."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit PNG/TIFF grey (mode I;16*, or I in older PIL): 0..65535 -> 0..255.
        values = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img.convert("RGBA")).convert("RGB")
    return img


def classify(clf: Classifier, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, K) for uint8 images (B, C, H, W): the model normalises them."""
    with torch.inference_mode():
        probs = clf.model(images).float()
    if not bool(torch.isfinite(probs).all()):  # a logged model's weights are not read here
        raise AppliedTorchError(
            "the model gives NaN or inf probabilities: its weights are not finite"
        )
    return probs


def export_test_image(data_dir: str | Path, out: str | Path, index: int = 0) -> str:
    """Write test image `index` of the dataset in `data_dir` (read and verified by the loader) as a
    PNG at `out`, atomically; return the line that says what was written."""
    from PIL import Image

    from appliedtorch.core.utils import atomic_path
    from appliedtorch.data.loading import load_dataset

    data_dir, out = Path(data_dir), Path(out)
    if out.suffix.lower() != ".png":
        raise AppliedTorchError(f"{out}: the test image is written as PNG; name it *.png")
    data = load_dataset(dataset_in(data_dir), data_dir)
    count = len(data.test_images)
    if not 0 <= index < count:
        raise AppliedTorchError(
            f"--index {index}: the {data.name} test set in {data_dir} has {count} images "
            f"(0 to {count - 1})"
        )
    image = data.test_images[index]  # (C, H, W) uint8
    pixels = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
    with atomic_path(out) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    label = data.classes[int(data.test_labels[index])]
    synthetic = " (synthetic)" if data.synthetic else ""
    return f"wrote {out}: {data.name}{synthetic} test image {index}, class {label}"


def dataset_in(data_dir: Path) -> str:
    """The dataset a download stage left in `data_dir`: source.json says, else the layout."""
    import json

    from appliedtorch.data.datasets import DATASETS_BY_NAME

    try:
        named = json.loads((data_dir / "source.json").read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        named = None
    if isinstance(named, str) and named in DATASETS_BY_NAME:
        return named
    for name, entry in DATASETS_BY_NAME.items():
        if (data_dir / entry.folder).is_dir():
            return name
    raise AppliedTorchError(
        f"{data_dir}: no downloaded dataset in it (not data/raw/<dataset>); run "
        "`dvc repro download@mnist` and pass data/raw/mnist"
    )


def predict_images(model: str, images: Sequence[Path], top: int) -> None:
    """Print one tab-separated line per image: path, then the `top` classes and probabilities;
    a warning line (stderr) for each image that is not the kind the model was trained on."""
    clf = load_classifier(model)
    tensors = []
    for path in images:
        tensor, note = load_image(path, clf.input_shape)
        if note:
            print(f"warning: {note}; the answer may mean little", file=sys.stderr, flush=True)
        tensors.append(tensor)
    probs = classify(clf, torch.stack(tensors))
    if probs.ndim != 2 or probs.shape[1] != len(clf.classes):
        raise AppliedTorchError(
            f"model '{model}' gives {tuple(probs.shape)} outputs for {len(images)} image(s), "
            f"but its metadata names {len(clf.classes)} classes; not a model appliedtorch wrote"
        )
    k = max(1, min(top, len(clf.classes)))
    for path, row in zip(images, probs, strict=True):
        best = torch.topk(row, k)
        guesses = "\t".join(
            f"{clf.classes[i]}\t{p:.4f}"
            for p, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)
        )
        print(f"{path}\t{guesses}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `appliedtorch-predict`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="models:/name@alias, runs:/id/model or a .pt")
    parser.add_argument("--top", type=int, default=1, help="show the K most likely classes")
    parser.add_argument(
        "--export-test-image",
        nargs=2,
        metavar=("DATA_DIR", "PNG"),
        help="write a test image of a downloaded dataset (e.g. data/raw/mnist digit.png) to try",
    )
    parser.add_argument("--index", type=int, default=0, help="which test image to export")
    parser.add_argument("images", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.export_test_image and (args.model or args.images):
        parser.error("--export-test-image takes no --model and no images")
    if not args.export_test_image and not (args.model and args.images):
        parser.error("give --model and at least one image (or --export-test-image DATA_DIR PNG)")

    def body() -> None:
        if args.export_test_image:
            print(export_test_image(*args.export_test_image, index=args.index))
        else:
            predict_images(args.model, args.images, args.top)

    run_stage(body)


if __name__ == "__main__":
    main()
