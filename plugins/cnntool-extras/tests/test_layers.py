"""Each extras layer against a plain numpy reference (forward and backward), finite
differences and cnntool's conformance kit, reached through the installed entry points."""

import cnntool_extras
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from cnntool.errors import SpecError
from cnntool.layers import pair
from cnntool.model.registry import get_registry
from cnntool.testing import CHECKS, check_gradients, check_layer, layer_examples, make_layer

TYPES = ("leaky_relu", "prelu", "depthwise_conv2d")


# --- numpy references --------------------------------------------------------------------------


def leaky_relu_reference(x, slope, grad_out):
    y = np.where(x > 0, x, slope * x)
    return y, np.where(x > 0, grad_out, slope * grad_out)


def prelu_reference(x, weight, grad_out):
    """PyTorch's PReLU: the channel is axis 1; a weight of size 1 is shared by all channels."""
    slope = np.broadcast_to(weight, (x.shape[1],)).reshape((1, -1) + (1,) * (x.ndim - 2))
    y = np.where(x > 0, x, slope * x)
    grad_x = np.where(x > 0, grad_out, slope * grad_out)
    other_axes = tuple(axis for axis in range(x.ndim) if axis != 1)
    per_channel = np.where(x > 0, 0.0, grad_out.astype(np.float64) * x).sum(axis=other_axes)
    grad_weight = per_channel if weight.size > 1 else per_channel.sum(keepdims=True)
    return y, grad_x, grad_weight


def depthwise_reference(x, weight, bias, stride, pads, grad_out):
    """Windows of the zero-padded input; output channel o reads input channel o // m."""
    top, left, bottom, right = pads
    sh, sw = stride
    batch, channels = x.shape[:2]
    multiplier = weight.shape[0] // channels
    kh, kw = weight.shape[2:]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    windows = np.repeat(windows, multiplier, axis=1)  # (N, C*m, OH, OW, kh, kw)
    y = np.einsum("nohwuv,ouv->nohw", windows, weight[:, 0]) + bias[None, :, None, None]
    grad_weight = np.einsum("nohwuv,nohw->ouv", windows, grad_out)[:, None]
    grad_bias = grad_out.sum(axis=(0, 2, 3))
    grad_padded = np.zeros_like(padded)
    for i in range(grad_out.shape[2]):
        for j in range(grad_out.shape[3]):
            spread = grad_out[:, :, i, j, None, None] * weight[None, :, 0]  # (N, C*m, kh, kw)
            grad_padded[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw] += spread.reshape(
                batch, channels, multiplier, kh, kw
            ).sum(axis=2)
    grad_x = grad_padded[:, :, top : top + x.shape[2], left : left + x.shape[3]]
    return y, grad_x, grad_weight, grad_bias


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# --- forward and backward against the references -----------------------------------------------


@pytest.mark.parametrize("slope,input_shape", [(0.01, (3, 5, 5)), (0.2, (7,)), (-0.5, (2, 3, 4))])
def test_leaky_relu_matches_reference(rng, slope, input_shape):
    layer = make_layer({"type": "leaky_relu", "negative_slope": slope}, input_shape)
    x = rng.standard_normal((4, *input_shape)).astype(np.float32)
    x.reshape(-1)[:3] = 0.0  # at 0 the slope is negative_slope's, as in PyTorch
    grad_out = rng.standard_normal(x.shape).astype(np.float32)
    y, grad_x = leaky_relu_reference(x, np.float32(slope), grad_out)
    assert_close(layer.forward(x), y)
    assert_close(layer.backward(grad_out), grad_x)


@pytest.mark.parametrize(
    "config,input_shape",
    [
        ({"type": "prelu"}, (3, 5, 5)),
        ({"type": "prelu", "shared": True}, (3, 4, 4)),
        ({"type": "prelu"}, (6,)),
    ],
)
def test_prelu_matches_reference(rng, config, input_shape):
    layer = make_layer(config, input_shape)
    assert np.all(layer.params["weight"] == np.float32(0.25))
    expected_shape = (1,) if config.get("shared") else (input_shape[0],)
    assert layer.params["weight"].shape == expected_shape
    layer.params["weight"][:] = rng.uniform(-1, 1, expected_shape)
    x = rng.standard_normal((4, *input_shape)).astype(np.float32)
    grad_out = rng.standard_normal(x.shape).astype(np.float32)
    y, grad_x, grad_weight = prelu_reference(x, layer.params["weight"], grad_out)
    assert_close(layer.forward(x), y)
    assert_close(layer.backward(grad_out), grad_x)
    assert_close(layer.grads["weight"], grad_weight)


DEPTHWISE_CASES = [
    ({"type": "depthwise_conv2d", "kernel_size": 3}, (2, 7, 7)),
    ({"type": "depthwise_conv2d", "kernel_size": [3, 2], "stride": 2, "padding": 1}, (3, 8, 7)),
    ({"type": "depthwise_conv2d", "kernel_size": 4, "padding": "same", "depth_multiplier": 3}, (2, 6, 5)),
    ({"type": "depthwise_conv2d", "kernel_size": 3, "stride": [2, 1], "padding": "same"}, (1, 7, 6)),
    ({"type": "depthwise_conv2d", "kernel_size": 2, "depth_multiplier": 2, "use_bias": False}, (3, 5, 5)),
]


@pytest.mark.parametrize("config,input_shape", DEPTHWISE_CASES, ids=lambda v: str(v))
def test_depthwise_conv2d_matches_reference(rng, config, input_shape):
    layer = make_layer(config, input_shape, seed=5)
    if "bias" in layer.params:
        layer.params["bias"][:] = rng.standard_normal(layer.params["bias"].shape)
    x = rng.standard_normal((3, *input_shape)).astype(np.float32)
    out = layer.forward(x)
    assert out.shape == (3, *layer.output_shape)
    grad_out = rng.standard_normal(out.shape).astype(np.float32)
    bias = layer.params.get("bias", np.zeros(out.shape[1], np.float32))
    y, grad_x, grad_weight, grad_bias = depthwise_reference(
        x, layer.params["weight"], bias, pair(layer.config.stride), layer.padding(layer.input_shape), grad_out
    )
    assert_close(out, y)
    assert_close(layer.backward(grad_out), grad_x)
    assert_close(layer.grads["weight"], grad_weight)
    if "bias" in layer.grads:
        assert_close(layer.grads["bias"], grad_bias)


def test_depthwise_output_sizes_follow_conv2d_rules():
    # "same" at stride 2: ceil(7 / 2) = 4 rows, ceil(6 / 2) = 3 columns, as conv2d and TensorFlow;
    # an odd amount of padding puts the extra row or column at the bottom or right.
    layer = make_layer(
        {"type": "depthwise_conv2d", "kernel_size": 3, "stride": 2, "padding": "same", "depth_multiplier": 2},
        (3, 7, 6),
    )
    assert layer.output_shape == (6, 4, 3)
    assert layer.params["weight"].shape == (6, 1, 3, 3)
    assert layer.params["bias"].shape == (6,)
    # Height: 2 rows of padding, 1 above and 1 below; width: 1 column, on the right.
    assert layer.padding(layer.input_shape) == (1, 0, 1, 1)


def test_first_layer_skips_the_input_gradient_but_not_the_weights(rng):
    config = {"type": "depthwise_conv2d", "kernel_size": 3, "padding": 1}
    layer = make_layer(config, (2, 5, 5))
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    grad_out = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    layer.forward(x)
    layer.need_input_grad = False
    layer.backward(grad_out)
    _, _, grad_weight, grad_bias = depthwise_reference(
        x, layer.params["weight"], layer.params["bias"], (1, 1), (1, 1, 1, 1), grad_out
    )
    assert_close(layer.grads["weight"], grad_weight)
    assert_close(layer.grads["bias"], grad_bias)


# --- finite differences and the conformance kit ------------------------------------------------


def all_examples():
    registry = get_registry()
    return [example for name in TYPES for example in layer_examples(registry.get(name), name)]


@pytest.mark.parametrize("config,input_shape", all_examples(), ids=lambda v: str(v))
def test_gradients_match_finite_differences(config, input_shape):
    layer = make_layer(config, input_shape, seed=2)
    worst = check_gradients(layer, batch=2)
    assert set(worst) == {"x", *layer.params}


@pytest.mark.parametrize("config,input_shape", all_examples(), ids=lambda v: str(v))
def test_conformance(config, input_shape):
    results = check_layer(config, input_shape)
    assert [r.check for r in results] == list(CHECKS)
    assert [r.message for r in results if not r.ok] == []
    # Declared kernel calls: the network ran compiled, agreeing with layer by layer.
    assert [r.message for r in results if r.check == "compiled"] == [""]


def test_types_come_from_this_distribution():
    registry = get_registry()
    for name in TYPES:
        assert registry.provider(name) == f"cnntool-extras=={cnntool_extras.__version__}"
        assert registry.get(name).__module__ == f"cnntool_extras.{name}"


# --- validation --------------------------------------------------------------------------------


def test_invalid_configs_are_spec_errors():
    with pytest.raises(SpecError, match=r"layer 0 \(leaky_relu\) negative_slope: Input should be a finite"):
        make_layer({"type": "leaky_relu", "negative_slope": float("nan")}, (3, 4, 4))
    with pytest.raises(SpecError, match=r"layer 0 \(depthwise_conv2d\) depth_multiplier: Input should be"):
        make_layer({"type": "depthwise_conv2d", "kernel_size": 3, "depth_multiplier": 0}, (3, 4, 4))
    with pytest.raises(SpecError, match=r"layer 0 \(prelu\) slope: Extra inputs are not permitted"):
        make_layer({"type": "prelu", "slope": 0.1}, (3, 4, 4))


def test_depthwise_shape_errors_say_what_fits():
    import cnntool

    head = [{"type": "flatten"}, {"type": "dense", "units": 2}]
    spec = {"input_shape": [2, 4, 4], "layers": [{"type": "depthwise_conv2d", "kernel_size": 5}, *head]}
    with pytest.raises(
        SpecError,
        match=r"layer 0 'depthwise_conv2d_1' \(depthwise_conv2d\): kernel_size 5x5 is larger than its input "
        r"4x4 padded to 4x4; use a smaller kernel or more padding",
    ):
        cnntool.validate_spec(spec)
    spec["layers"] = [{"type": "flatten"}, {"type": "depthwise_conv2d", "kernel_size": 1}, *head]
    with pytest.raises(SpecError, match=r"image input \(channels, height, width\), received shape \(32,\)"):
        cnntool.validate_spec(spec)


# --- PyTorch, where it is installed --------------------------------------------------------------


def test_same_results_as_pytorch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    grad_out_rng = np.random.default_rng(3)

    def torch_run(module, x):
        tx = torch.tensor(x, requires_grad=True)
        y = module(tx)
        g = torch.tensor(grad_out_rng.standard_normal(tuple(y.shape)).astype(np.float32))
        y.backward(g)
        return y.detach().numpy(), tx.grad.numpy(), g.numpy()

    leaky = make_layer({"type": "leaky_relu", "negative_slope": 0.1}, (3, 6, 6))
    y, grad_x, g = torch_run(torch.nn.LeakyReLU(0.1), x)
    assert_close(leaky.forward(x), y)
    assert_close(leaky.backward(g), grad_x)

    prelu = make_layer({"type": "prelu"}, (3, 6, 6))
    reference = torch.nn.PReLU(num_parameters=3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([0.25, -0.5, 1.5]))
    prelu.params["weight"][:] = [0.25, -0.5, 1.5]
    y, grad_x, g = torch_run(reference, x)
    assert_close(prelu.forward(x), y)
    assert_close(prelu.backward(g), grad_x)
    assert_close(prelu.grads["weight"], reference.weight.grad.numpy())

    depthwise = make_layer(
        {"type": "depthwise_conv2d", "kernel_size": 3, "stride": 2, "padding": 1, "depth_multiplier": 2},
        (3, 6, 6),
        seed=4,
    )
    reference = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1, groups=3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(depthwise.params["weight"]))
        reference.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5, -0.6]))
    depthwise.params["bias"][:] = [0.1, -0.2, 0.3, 0.0, 0.5, -0.6]
    y, grad_x, g = torch_run(reference, x)
    assert_close(depthwise.forward(x), y)
    assert_close(depthwise.backward(g), grad_x)
    assert_close(depthwise.grads["weight"], reference.weight.grad.numpy())
    assert_close(depthwise.grads["bias"], reference.bias.grad.numpy())
