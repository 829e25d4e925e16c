"""Classify image files with a trained classifier.

    appliedtorch-predict --model models:/mnist-mlp@champion digit.png
    appliedtorch-predict --model models/cnn.pt --top 3 cat.png ship.jpg

Prints one tab-separated line per image: the path, then class and probability for each of the
`--top` most likely classes.

`--model` takes a registered model (`models:/name@alias` or `models:/name/version`), a run's model
(`runs:/<run_id>/model`) or a model file written by a training stage (`models/mlp.pt`). Images
are converted to the model's input shape: grayscale 28x28 for MNIST (white digit on black, as in
MNIST), RGB 32x32 for CIFAR-10. All three are the same model, a `PixelClassifier`: it takes those
uint8 pixels, normalises them as in training and returns probabilities, as `mlflow models serve`
does for the same pixels.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliedtorch.core.cli import run_stage
from appliedtorch.core.errors import AppliedTorchError


@dataclass(frozen=True)
class Classifier:
    """A model plus what it needs to turn image files into inputs."""

    model: Any  # callable: uint8 (B, C, H, W) -> probabilities (B, K)
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)


def load_classifier(uri: str) -> Classifier:
    """Load a model file or an MLflow model URI, with its class names and input shape."""
    if "://" not in uri and not uri.startswith(("models:/", "runs:/")):
        from appliedtorch.classify.models import load_model

        model, meta = load_model(uri)
    else:
        from appliedtorch.core.tracking import load_logged_model

        model, meta = load_logged_model(uri)
    missing = {"classes", "input_shape"} - meta.keys()
    if missing:
        raise AppliedTorchError(f"model '{uri}' lacks {', '.join(sorted(missing))}; retrain it")
    if meta.get("input_dtype") != "uint8":
        raise AppliedTorchError(
            f"model '{uri}' takes normalised floats, not pixels (logged by an older "
            "appliedtorch); retrain it"
        )
    return Classifier(
        model=model,
        classes=list(meta["classes"]),
        input_shape=tuple(int(d) for d in meta["input_shape"]),  # type: ignore[arg-type]
    )


def read_image(path: str | Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """An image file as uint8 (C, H, W) in the model's input shape; one-line error if unusable.

    16-bit images are scaled to 8 bits (not clipped to white); transparent pixels (alpha,
    or a palette's transparent index) are composited onto black, MNIST's background; an image
    over PIL's pixel limit (`Image.MAX_IMAGE_PIXELS`, a decompression-bomb guard) is refused.
    """
    import warnings

    from PIL import Image

    channels, height, width = shape
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; here both are a refusal, and no
            # other PIL warning may reach stderr beside the one-line contract.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as img:
                img = _to_8bit(img).convert("L" if channels == 1 else "RGB")
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
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1)


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
        return clf.model(images).float()


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `appliedtorch-predict`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="models:/name@alias, runs:/id/model or a .pt"
    )
    parser.add_argument("--top", type=int, default=1, help="show the K most likely classes")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args(argv)

    def predict() -> None:
        clf = load_classifier(args.model)
        batch = torch.stack([read_image(p, clf.input_shape) for p in args.images])
        probs = classify(clf, batch)
        k = max(1, min(args.top, len(clf.classes)))
        for path, row in zip(args.images, probs, strict=True):
            top = torch.topk(row, k)
            guesses = "\t".join(
                f"{clf.classes[i]}\t{p:.4f}"
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            )
            print(f"{path}\t{guesses}")

    run_stage(predict)


if __name__ == "__main__":
    main()
