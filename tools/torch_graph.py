"""The same network in PyTorch: a module that runs a cnntool network's layers (a stack or a
graph) with torch operations, holding copies of its weights, for comparing the two on the
same input (tests/test_graph.py) and timing them side by side (tools/bench.py)."""

from typing import Any

import numpy as np

from cnntool.layers.base import pair


def torch_graph(torch: Any, net: Any) -> Any:
    nn, functional = torch.nn, torch.nn.functional

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.steps = nn.ModuleList()
            for layer in net.layers:
                self.steps.append(module_for(layer))

        def forward(self, x: Any) -> Any:
            outputs = {-1: x}
            for index, (layer, step) in enumerate(zip(net.layers, self.steps, strict=True)):
                inputs = [outputs[source] for source in layer.sources]
                kind = layer.config.type
                if kind == "add":
                    value = inputs[0]
                    for other in inputs[1:]:
                        value = value + other
                elif kind == "concat":
                    value = torch.cat(inputs, dim=1)
                elif kind == "softmax" and index == len(net.layers) - 1:
                    value = inputs[0]  # the classifier head: the loss takes the logits
                elif kind == "conv2d" and layer in padded:
                    top, left, bottom, right = layer.padding(layer.input_shape)
                    value = step(functional.pad(inputs[0], (left, right, top, bottom)))
                else:
                    value = step(inputs[0])
                outputs[index] = value
            return outputs[len(net.layers) - 1]

    padded = []  # convolutions padded more at the bottom and right than at the top and left

    def module_for(layer: Any) -> Any:
        config, kind = layer.config, layer.config.type
        if kind == "conv2d":
            top, left, bottom, right = layer.padding(layer.input_shape)
            if (top, left) != (bottom, right):
                padded.append(layer)
                top = left = 0
            module = nn.Conv2d(
                layer.input_shape[0], config.filters, pair(config.kernel_size), pair(config.stride),
                padding=(top, left), bias=config.use_bias,
            )  # fmt: skip
        elif kind == "dense":
            module = nn.Linear(layer.input_shape[0], config.units, bias=config.use_bias)
        elif kind == "batchnorm2d":
            module = nn.BatchNorm2d(layer.input_shape[0], eps=config.eps, momentum=config.momentum)
        elif kind in ("maxpool2d", "avgpool2d"):
            ph, pw, sh, sw = layer.window
            pool = nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d
            module = pool((ph, pw), (sh, sw))
        else:
            module = {
                "relu": nn.ReLU, "flatten": nn.Flatten, "global_avgpool2d": lambda: nn.AdaptiveAvgPool2d(1),
                "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "add": nn.Identity, "concat": nn.Identity,
                "softmax": lambda: nn.Softmax(dim=1),
            }[kind]()  # fmt: skip
        with torch.no_grad():
            for key, tensor in module.state_dict().items():
                if key == "num_batches_tracked":
                    continue
                source = layer.params.get(key, layer.state.get(key))
                tensor.copy_(torch.tensor(np.asarray(source)))
        if kind == "global_avgpool2d":
            return nn.Sequential(module, nn.Flatten()) if len(layer.output_shape) == 1 else module
        return module

    return Graph()


def torch_weights(model: Any, net: Any) -> dict[str, np.ndarray]:
    """The model's weights and running statistics under cnntool's keys."""
    found = {}
    for layer, step in zip(net.layers, model.steps, strict=True):
        state = step.state_dict()
        for key in (*layer.params, *layer.state):
            found[f"{layer.name}.{key}"] = state[key].detach().numpy()
    return found
