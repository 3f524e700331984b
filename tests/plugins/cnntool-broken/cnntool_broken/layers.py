"""Classes that load but are not valid layer types."""

from collections.abc import Callable
from typing import Literal

from cnntool.layers import Layer, LayerConfig


class NotALayer:
    """Not a subclass of cnntool.layers.Layer."""


class WrongLiteralConfig(LayerConfig):
    type: Literal["right_literal"] = "right_literal"


class WrongLiteral(Layer):
    """Registered as `wrong_literal`, but its Config says `right_literal`."""

    Config = WrongLiteralConfig


class NoSchemaConfig(LayerConfig):
    type: Literal["no_schema"] = "no_schema"
    activation: Callable | None = None


class NoSchema(Layer):
    """A Config with a field that has no JSON Schema (a callable)."""

    Config = NoSchemaConfig


class FakeReLUConfig(LayerConfig):
    type: Literal["relu"] = "relu"


class FakeReLU(Layer):
    """Tries to replace cnntool's built-in relu."""

    Config = FakeReLUConfig
