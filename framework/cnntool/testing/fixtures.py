"""What the checks feed a layer: random inputs for each of its inputs, its gradients per input,
and the smallest networks holding it (one layer wrapped to logits, or several inputs merged).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnntool.errors import PluginError
from cnntool.layers.base import Layer, Shape


def inputs_of(layer: Layer, batch: int, rng: np.random.Generator, x: Any = None) -> list[np.ndarray]:
    """The layer's inputs as a list (one array, or one per input of a merge layer):
    `x` when given, else standard-normal arrays of the input shapes."""
    shapes = list(layer.input_shape) if layer.multi_input else [layer.input_shape]
    if x is None:
        return [rng.standard_normal((batch, *shape)).astype(np.float32) for shape in shapes]
    return [np.ascontiguousarray(a, np.float32) for a in (x if layer.multi_input else [x])]


def input_names(layer: Layer) -> list[str]:
    """'x', or 'x0', 'x1', ... for the inputs of a merge layer, in messages."""
    return [f"x{k}" for k in range(len(layer.input_shape))] if layer.multi_input else ["x"]


def per_input(layer: Layer, result: Any) -> list[Any]:
    """What backward returned, as a list with one gradient per input."""
    return list(result) if layer.multi_input else [result]


def wrapping_spec(config: dict, input_shape: Any) -> dict:
    """A classifier spec around one layer: an image input goes straight in, a flat input
    (features,) is given as (features, 1, 1) and flattened first; flatten and dense follow.
    A merge layer (several input shapes) reads one branch per input, made from the network
    input by a 1x1 convolution (images of one size) or a dense layer (flat inputs)."""
    if input_shape and isinstance(input_shape[0], (tuple, list)):
        return merging_spec(config, [tuple(shape) for shape in input_shape])
    shape = tuple(input_shape)
    if len(shape) == 3:
        layers, spec_input = [config], list(shape)
    elif len(shape) == 1:
        layers, spec_input = [{"type": "flatten"}, config], [shape[0], 1, 1]
    else:
        raise PluginError(
            f"{config['type']}: example input shape {shape} is neither (channels, height, width) "
            "nor (features,)"
        )
    return {
        "name": f"check-{config['type']}",
        "input_shape": spec_input,
        "layers": [*layers, {"type": "flatten"}, {"type": "dense", "units": 3}],
    }


def merging_spec(config: dict, shapes: list[Shape]) -> dict:
    if all(len(shape) == 3 and shape[1:] == shapes[0][1:] for shape in shapes):
        spec_input, layers = list(shapes[0]), []
        branches = [
            {
                "type": "conv2d",
                "name": f"branch{k}",
                "inputs": ["input"],
                "filters": shape[0],
                "kernel_size": 1,
            }
            for k, shape in enumerate(shapes)
        ]
    elif all(len(shape) == 1 for shape in shapes):
        spec_input, layers = [shapes[0][0], 1, 1], [{"type": "flatten", "name": "flat"}]
        branches = [
            {"type": "dense", "name": f"branch{k}", "inputs": ["flat"], "units": shape[0]}
            for k, shape in enumerate(shapes)
        ]
    else:
        raise PluginError(
            f"{config['type']}: example input shapes {shapes} are neither images of one size nor flat"
        )
    merge = {**config, "inputs": [branch["name"] for branch in branches]}
    return {
        "name": f"check-{config['type']}",
        "input_shape": spec_input,
        "layers": [*layers, *branches, merge, {"type": "flatten"}, {"type": "dense", "units": 3}],
    }
