"""Built-in layer types, one module each. They register through the `cnntool.layers`
entry-point group like any plugin. This package exports what a layer is made of, for
plugin authors: the base classes, the references a layer's kernel calls are written with
(see `base`), and the shape helpers the built-in layers use."""

from cnntool.layers.base import (
    GRAD_OUT,
    OFFSET,
    RANDOM,
    Array,
    Call,
    Either,
    Layer,
    LayerConfig,
    Ref,
    Shape,
    ShapeError,
    X,
    buf,
    expect_image,
    grad,
    padding_sides,
    pair,
    param,
    scratch,
    state,
    xs,
)
from cnntool.layers.epilogue import Epilogue

__all__ = [
    "GRAD_OUT",
    "OFFSET",
    "RANDOM",
    "Array",
    "Call",
    "Either",
    "Epilogue",
    "Layer",
    "LayerConfig",
    "Ref",
    "Shape",
    "ShapeError",
    "X",
    "buf",
    "expect_image",
    "grad",
    "padding_sides",
    "pair",
    "param",
    "scratch",
    "state",
    "xs",
]
