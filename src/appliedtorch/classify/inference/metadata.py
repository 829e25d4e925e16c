"""The typed gate for a classifier's metadata: a model file's, or a logged MLflow model's.

    saved = torch.load("models/mlp.pt", weights_only=True)
    meta = check_model_file(saved, "models/mlp.pt")    # before any network is built
    net = build_model(meta.net, **meta.model_args.model_dump(exclude_unset=True))

A model file is data from outside (a download, a colleague, a bucket): every key must be one a
training stage writes, every size bounded (at most 3x512x512 pixels, 1000 classes, the params'
widths and depths), every part consistent with the others (one class name per output, one mean
and std per channel, the network's input the image's shape), and the saved weights exactly the
shapes of the network the arguments describe. The network is first built on torch's `meta` device
(no memory), so arguments that describe a 40 GB network are refused in one line, not allocated.
Each problem is one `AppliedTorchError` line naming the field, e.g.
`evil.pt: model_args.hidden_size must be <= 65536 (got 1000000)`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from appliedtorch.classify.params import MAX_SEEDS
from appliedtorch.core.errors import AppliedTorchError, ParamsError
from appliedtorch.core.params import MAX_LAYERS, MAX_WIDTH, Section, validate
from appliedtorch.data.labels import check_class_names

MAX_SIDE = 512  # pixels: the largest image side a model may expect (CIFAR-10's is 32)
MAX_CLASSES = 1000
MAX_CNN_WIDTH = 1024  # as cnn.width in params.yaml
MAX_TENSORS = 4096  # entries of a state dict: a 256-layer MLP with batch norm has ~1800

Channels = Literal[1, 3]


class MLPArgs(Section):
    """`MLP(...)`'s arguments as a model file holds them."""

    in_features: int = Field(gt=0, le=3 * MAX_SIDE * MAX_SIDE)
    hidden_size: int = Field(gt=0, le=MAX_WIDTH)
    num_classes: int = Field(gt=0, le=MAX_CLASSES)
    hidden_layers: int = Field(2, gt=0, le=MAX_LAYERS)
    residual: bool = False
    batch_norm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)


class CNNArgs(Section):
    """`CNN(...)`'s arguments."""

    in_channels: Channels
    num_classes: int = Field(gt=0, le=MAX_CLASSES)
    dropout: float = Field(0.5, ge=0, lt=1)
    image_size: int = Field(32, ge=8, le=MAX_SIDE)  # three 2x2 poolings need 8 pixels
    hidden_size: int = Field(512, gt=0, le=MAX_WIDTH)
    width: int = Field(32, gt=0, le=MAX_CNN_WIDTH)
    batch_norm: bool = False
    flip_tta: bool = False


class ResNetArgs(Section):
    """`ResNet(...)`'s arguments."""

    in_channels: Channels
    num_classes: int = Field(gt=0, le=MAX_CLASSES)
    dropout: float = Field(0.0, ge=0, lt=1)
    width: int = Field(16, gt=0, le=MAX_CNN_WIDTH)
    batch_norm: bool = True
    flip_tta: bool = False


class ModelMeta(Section):
    """What `outputs.model_metadata` writes: the metadata of a model file and of a logged model."""

    classes: list[str] = Field(min_length=1, max_length=MAX_CLASSES)
    mean: list[float] = Field(min_length=1, max_length=3)
    std: list[float] = Field(min_length=1, max_length=3)
    input_shape: list[int] = Field(min_length=3, max_length=3)  # (C, H, W)
    input_dtype: Literal["uint8"]
    output: Literal["probabilities"] = "probabilities"
    dataset: str = Field("unknown", max_length=64)
    data_source: str = Field("unknown", max_length=4096)
    test_accuracy: float | None = Field(None, ge=0, le=1)
    members: int = Field(1, ge=1, le=MAX_SEEDS)  # > 1: an `Ensemble` of that many nets

    @model_validator(mode="after")
    def _consistent(self) -> ModelMeta:
        c, h, w = self.input_shape
        if c not in (1, 3) or not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise ValueError(
                f"input_shape must be 1 or 3 channels of at most {MAX_SIDE}x{MAX_SIDE} pixels "
                f"(got {'x'.join(map(str, self.input_shape))})"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != c:
                raise ValueError(f"{name} must have one value per channel ({c}, got {len(values)})")
        if not all(0 <= m <= 1 for m in self.mean) or not all(1e-3 <= s <= 1 for s in self.std):
            raise ValueError("mean must be in [0, 1] and std in [0.001, 1] (pixel fractions)")
        check_class_names(self.classes)  # the rule a mirror's names meet at download
        return self


class ModelFile(ModelMeta):
    """A model file (`save_model`): the metadata plus the network's name and arguments (the
    subclasses below give `model_args` its schema for each `net`)."""

    net: Literal["mlp", "cnn", "resnet"]
    model_args: dict[str, Any]

    @model_validator(mode="after")
    def _fits_input(self) -> ModelFile:
        c, h, w = self.input_shape
        args = self.model_args
        if isinstance(args, dict):  # an unknown net: its own error names it
            return self
        if args.num_classes != len(self.classes):
            raise ValueError(
                f"classes must name each of the {args.num_classes} outputs "
                f"(got {len(self.classes)} names)"
            )
        if isinstance(args, MLPArgs) and args.in_features != c * h * w:
            raise ValueError(
                f"model_args.in_features must be {c}x{h}x{w} = {c * h * w} (input_shape)"
            )
        if isinstance(args, (CNNArgs, ResNetArgs)) and args.in_channels != c:
            raise ValueError(f"model_args.in_channels must be {c} (input_shape)")
        if isinstance(args, CNNArgs) and not args.image_size == h == w:
            raise ValueError(f"model_args.image_size must be {h} = {w} (input_shape)")
        return self


class MLPFile(ModelFile):
    model_args: MLPArgs  # type: ignore[assignment]


class CNNFile(ModelFile):
    model_args: CNNArgs  # type: ignore[assignment]


class ResNetFile(ModelFile):
    model_args: ResNetArgs  # type: ignore[assignment]


FILES: dict[str, type[ModelFile]] = {"mlp": MLPFile, "cnn": CNNFile, "resnet": ResNetFile}


def _checked(schema: type[Section], raw: dict[str, Any], name: str) -> Any:
    """`validate`'s one line, as a model error (exit code 1, not params.yaml's 2)."""
    try:
        return validate(schema, raw, name)
    except ParamsError as exc:
        # A check across fields has no key of its own: its message names them.
        raise AppliedTorchError(str(exc).replace(":  ", ": ", 1)) from None


def check_metadata(meta: Any, name: str) -> ModelMeta:
    """A logged model's metadata, checked; one line naming the field otherwise."""
    if not isinstance(meta, dict):
        raise AppliedTorchError(
            f"{name}: metadata is not a mapping; not a model appliedtorch logged"
        )
    return _checked(ModelMeta, meta, name)


def check_model_file(saved: Any, name: str) -> ModelFile:
    """A loaded model file's contents (without the state dict), checked before any net is built;
    then its state dict against the shapes of the network it describes."""
    if not isinstance(saved, dict):
        raise AppliedTorchError(f"{name}: not an appliedtorch model file (not a mapping)")
    raw = {k: v for k, v in saved.items() if k != "state_dict"}
    net = raw.get("net")
    # The net picks the arguments' schema, so errors name model_args.<key> of that net.
    schema = FILES.get(net, ModelFile) if isinstance(net, str) else ModelFile
    meta = _checked(schema, raw, name)
    check_state_dict(saved.get("state_dict"), meta, name)
    return meta


def check_state_dict(state: Any, meta: ModelFile, name: str) -> None:
    """The saved weights must be exactly the tensors of the described network (built on the
    `meta` device: shapes without memory), so building it allocates no more than the file holds."""
    from appliedtorch.classify.nets.models import PixelClassifier, build_network, check_finite

    if not isinstance(state, dict) or not 0 < len(state) <= MAX_TENSORS:
        raise AppliedTorchError(
            f"{name}: state_dict must be a mapping of at most {MAX_TENSORS} tensors"
        )
    with torch.device("meta"):
        args = meta.model_args.model_dump(exclude_unset=True)
        net = build_network(meta.net, args, meta.members)
        expected = PixelClassifier(net, meta.mean, meta.std).state_dict()
    for key, tensor in state.items():
        if key not in expected:
            raise AppliedTorchError(
                f"{name}: state_dict has '{str(key)[:60]}', which the {meta.net} network does not have"
            )
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise AppliedTorchError(
                f"{name}: state_dict['{key}'] must be {tuple(expected[key].shape)} (got {got})"
            )
        if not (tensor.is_floating_point() or key.endswith("num_batches_tracked")):
            raise AppliedTorchError(
                f"{name}: state_dict['{key}'] must hold floats (got {tensor.dtype})"
            )
    missing = sorted(expected.keys() - state.keys())
    if missing:
        raise AppliedTorchError(f"{name}: state_dict lacks '{missing[0]}' ({len(missing)} missing)")
    check_finite(state, name)
