"""The fields of a network spec other than its layers: name, input shape, classes and the
training recipe, as pydantic models that know nothing of layer types. The registry adds
`layers`, a tagged union over every installed layer type's config (`Registry.spec_model`);
`cnntool.model.spec` validates whole specs with it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from cnntool.layers.base import LayerConfig

MAX_INPUT_ELEMENTS = 1 << 26
MAX_SPEC_BYTES = 16 << 20

Dim = Annotated[int, Field(ge=1, le=1 << 16)]


# What an epoch's record holds that training watches (early stopping, plateau, the best
# epoch) and a sweep ranks by: the one list, for the spec, the trainer and the sweeps.
Monitor = Literal["val_loss", "val_accuracy", "loss", "accuracy"]
MONITORS: tuple[str, ...] = get_args(Monitor)


class TrainingConfig(BaseModel):
    """Training options that a spec may carry; command-line options override them."""

    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(default=None, description="Dataset name or path.")
    epochs: Annotated[int, Field(ge=1, le=100_000)] = 5
    batch_size: Annotated[int, Field(ge=1, le=1 << 16)] = 32
    lr: Annotated[float, Field(gt=0, le=10)] | None = Field(
        default=None, description="Learning rate; defaults to 0.01 for sgd, 0.001 for adam/adamw."
    )
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Weight decay; defaults to 0, or 0.01 for adamw."
    )
    seed: Annotated[int, Field(ge=0, lt=1 << 63)] = 0
    val_split: Annotated[float, Field(ge=0, lt=1)] = 0.1
    lr_schedule: Literal["constant", "step", "cosine", "plateau"] = Field(
        default="constant",
        description="step: lr * lr_gamma every lr_step_size epochs; cosine: down to lr_min over the run; "
        "plateau: lr * lr_gamma after lr_patience epochs without improvement of `monitor`.",
    )
    lr_step_size: Annotated[int, Field(ge=1, le=100_000)] = 10
    lr_gamma: Annotated[float, Field(gt=0, lt=1)] = 0.1
    lr_patience: Annotated[int, Field(ge=0, le=100_000)] = 10
    lr_min: Annotated[float, Field(ge=0, le=10)] = 0.0
    warmup_epochs: Annotated[int, Field(ge=0, le=100_000)] = Field(
        default=0, description="Epochs over which the learning rate rises linearly, step by step, to lr."
    )
    monitor: Monitor = Field(
        default="val_loss", description="The metric early stopping and the plateau schedule watch."
    )
    early_stopping: Annotated[int, Field(ge=0, le=100_000)] | None = Field(
        default=None,
        description="Patience: stop after this many epochs without improvement of `monitor` (by more than "
        "min_delta); the bundle then holds the best epoch's weights. Off when absent.",
    )
    min_delta: Annotated[float, Field(ge=0)] = 0.0
    checkpoint_every: Annotated[int, Field(ge=0, le=100_000)] = Field(
        default=0, description="Write the bundle, with everything needed to resume, every N epochs (0: off)."
    )
    log: str | None = Field(default=None, description="File receiving one JSON line per epoch.")
    init_from: str | None = Field(
        default=None,
        description="Bundle whose weights start training: layers matched by name and shape are loaded, "
        "the others initialised (fine-tuning).",
    )
    freeze: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, description="Layers whose parameters training keeps fixed."
    )
    augment_shift: Annotated[int, Field(ge=0, le=1024)] = Field(
        default=0,
        description="Augmentation: shift each training image by up to this many pixels (edges repeated).",
    )
    augment_crop_padding: Annotated[int, Field(ge=0, le=1024)] = Field(
        default=0, description="Augmentation: pad by this many pixels (zeros) and crop back at random."
    )
    augment_flip: bool = Field(default=False, description="Augmentation: flip half the images left-right.")
    augment_rotation: Annotated[float, Field(ge=0, le=180)] = Field(
        default=0.0, description="Augmentation: rotate by up to this many degrees either way."
    )
    class_weights: (
        Literal["balanced"] | list[Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]] | None
    ) = Field(
        default=None,
        max_length=100_000,
        description='Weight of each class in the training loss (Keras\'s class_weight): "balanced" '
        "(n_images / (classes * images of the class), from the training split) or one positive "
        "number per class. Validation and test losses are not weighted.",
    )


class SpecBase(BaseModel):
    """Everything in a spec but the layers; the registry adds `layers` as a tagged union."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="network", min_length=1, max_length=128)
    input_shape: tuple[Dim, Dim, Dim] = Field(description="(channels, height, width)")
    classes: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None,
        min_length=2,
        max_length=100_000,
        description="Class names, one per output of the last layer; taken from the dataset when absent.",
    )
    training: TrainingConfig | None = None
    if TYPE_CHECKING:
        # The field the registry adds (Registry.spec_model): a union of the installed configs.
        layers: list[LayerConfig]

    @model_validator(mode="after")
    def _input_not_huge(self) -> SpecBase:
        if math.prod(self.input_shape) > MAX_INPUT_ELEMENTS:
            raise ValueError(f"input_shape {self.input_shape} has more than {MAX_INPUT_ELEMENTS} elements")
        return self
