"""Built-in layer types, one module each. They register through the `cnntool.layers`
entry-point group like any plugin; import them from here only to subclass or test them."""

from cnntool.layers.base import Layer, LayerConfig, Shape, ShapeError

__all__ = ["Layer", "LayerConfig", "Shape", "ShapeError"]
