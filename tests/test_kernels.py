"""Every built-in layer's forward and backward against the float64 numpy reference."""

import numpy as np
import pytest

import cnntool
import reference
from cnntool.layers import buf
from cnntool.testing import make_layer

F32 = {"rtol": 1e-4, "atol": 1e-4}


CONV_CASES = [
    # (channels, filters, kernel, stride, padding, use_bias, height, width)
    (1, 4, 3, 1, 0, True, 7, 9),
    (3, 5, 3, 2, 1, True, 9, 8),
    (2, 3, (2, 3), (2, 1), (1, 2), False, 7, 7),
    (3, 2, 3, 1, "same", True, 6, 5),
    (2, 4, 4, 2, "same", True, 7, 9),
    (4, 6, 1, 1, "valid", True, 5, 5),
    (3, 3, 5, 3, 2, True, 11, 10),
    # Large enough that conv2d rebuilds each image's columns in backward instead of keeping them.
    (16, 4, 3, 1, 1, True, 30, 30),
    (16, 8, 3, 2, 1, True, 40, 39),
    # Strides past the kernel: phases no tap reads, rows and columns no window reaches.
    (4, 6, 1, 2, 0, False, 7, 8),
    (2, 3, 2, 3, 0, True, 7, 8),
    # Large 3x3 stride-1 layers: a batch's forward pass goes by Winograd (odd output sizes
    # leave half tiles at the bottom or right).
    (16, 32, 3, 1, 0, True, 19, 20),
    (32, 16, 3, 1, "same", False, 16, 15),
]


def test_large_convolutions_rebuild_their_columns():
    small = make_layer({"type": "conv2d", "filters": 4, "kernel_size": 3}, (8, 13, 13))
    large = make_layer({"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": 1}, (16, 30, 30))
    assert small.keep_columns and not large.keep_columns


def test_large_3x3_convolutions_use_winograd():
    small = make_layer({"type": "conv2d", "filters": 16, "kernel_size": 3}, (8, 13, 13))
    large = make_layer({"type": "conv2d", "filters": 64, "kernel_size": 3}, (32, 26, 26))
    strided = make_layer({"type": "conv2d", "filters": 64, "kernel_size": 3, "stride": 2}, (32, 26, 26))
    five = make_layer({"type": "conv2d", "filters": 64, "kernel_size": 5}, (32, 26, 26))
    assert large.winograd and not (small.winograd or strided.winograd or five.winograd)
    # A single image of 5x5 outputs (9 tiles) takes the wide product, a batch Winograd; 7x7
    # (16 tiles) goes by Winograd from one image on.
    tiny = make_layer({"type": "conv2d", "filters": 96, "kernel_size": 3, "padding": 1}, (96, 5, 5))
    seven = make_layer({"type": "conv2d", "filters": 96, "kernel_size": 3, "padding": 1}, (96, 7, 7))
    assert tiny.winograd and (tiny.winograd_min_images, seven.winograd_min_images) == (2, 1)
    assert large.winograd_min_images == 1


@pytest.mark.parametrize("padding", [0, 1])
def test_winograd_batch_agrees_with_the_single_image_product(rng, padding):
    """A batch (Winograd) and the same images one at a time (the wide im2col product) give
    the same outputs up to float32 rounding."""
    layer = make_layer({"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": padding}, (16, 21, 18))
    assert layer.winograd
    layer.params["bias"][:] = rng.standard_normal(32)
    x = rng.standard_normal((4, 16, 21, 18)).astype(np.float32)
    batch = layer.forward(x).copy()
    singles = np.concatenate([layer.forward(x[i : i + 1]).copy() for i in range(4)])
    np.testing.assert_allclose(batch, singles, rtol=1e-5, atol=2e-5)
    expected = reference.conv2d(x, layer.params["weight"], layer.params["bias"], (1, 1), conv_pads(layer))
    np.testing.assert_allclose(batch, expected, **F32)


@pytest.mark.parametrize("padding, size", [(1, (14, 14)), (0, (13, 16)), ("same", (11, 9)), (2, (9, 9))])
def test_winograd_backward_with_a_fused_relu_matches_the_reference(rng, padding, size):
    """A layer whose training forward goes by Winograd computes its backward by Winograd
    too (conv2d_backward_winograd), here with a fused ReLU's mask (the plan's path; the
    layer alone runs it without): the weight gradient in the transformed space, the input
    gradient as the convolution of the masked gradient with the flipped kernels."""
    config = {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": padding}
    layer = make_layer(config, (16, *size))
    assert layer.winograd_backward and layer.WINOGRAD_BACKWARD_MIN_IMAGES <= 3
    layer.params["bias"][:] = rng.standard_normal(32)
    x = rng.standard_normal((3, 16, *size)).astype(np.float32)
    out = layer.forward(x, training=True).copy()
    grad_out = rng.standard_normal(out.shape).astype(np.float32)
    calls = layer.backward_calls(True, relu_output=buf("out"))  # the mask: where out > 0
    grad_x = layer._run(calls, 3, layer.backward_result, x, grad_out)
    masked = np.where(out > 0, grad_out, 0.0)
    dx, dw, db = reference.conv2d_backward(x, layer.params["weight"], masked, (1, 1), conv_pads(layer))
    np.testing.assert_allclose(grad_x, dx, **F32)
    np.testing.assert_allclose(layer.grads["weight"], dw, rtol=1e-4, atol=3e-4)
    np.testing.assert_allclose(layer.grads["bias"], db, rtol=1e-4, atol=3e-4)


def test_a_convolution_padded_past_2_keeps_the_wide_backward(rng):
    """The input gradient's convolution is padded by 2 - pad: a layer padded by 3 (legal,
    if odd) goes by the wide product in backward while its forward goes by Winograd."""
    layer = make_layer({"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": 3}, (16, 12, 12))
    assert layer.winograd and not layer.winograd_backward
    x = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    grad_out = rng.standard_normal(layer.forward(x, training=True).shape).astype(np.float32)
    dx, dw, _ = reference.conv2d_backward(x, layer.params["weight"], grad_out, (1, 1), conv_pads(layer))
    np.testing.assert_allclose(layer.backward(grad_out), dx, **F32)
    np.testing.assert_allclose(layer.grads["weight"], dw, rtol=1e-4, atol=3e-4)


def test_winograd_transforms_weights_again_exactly_when_they_change(rng):
    """transform_weights keeps the weights it transformed (`seen`) and skips the transform
    while they are the same bits: a changed weight, even -0.0 for 0.0, is transformed."""
    from cnntool.kernels.winograd import plane_shape, transform_weights

    def fresh(weight):
        u = np.zeros(plane_shape(5, 3), np.float32)
        transform_weights(weight, np.zeros_like(weight), u, 0, 5)
        return u

    weight = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    seen, u = np.zeros_like(weight), np.zeros(plane_shape(5, 3), np.float32)
    transform_weights(np.zeros_like(weight), seen, u, 0, 5)
    assert not u.any()  # zero scratch is the transform of zero weights
    transform_weights(weight, seen, u, 0, 5)
    np.testing.assert_array_equal(u, fresh(weight))
    np.testing.assert_array_equal(seen, weight)
    u[0, 0] = 99.0  # not recomputed while the weights stay
    transform_weights(weight.copy(), seen, u, 0, 5)
    assert u[0, 0] == 99.0
    changed = weight.copy()
    changed[4, 2, 2, 2] += 1.0  # the last element: the whole array was compared
    transform_weights(changed, seen, u, 0, 5)
    np.testing.assert_array_equal(u, fresh(changed))
    zeros = np.zeros_like(weight)
    transform_weights(zeros, seen, u, 0, 5)
    transform_weights(-zeros, seen, u, 0, 5)
    assert np.signbit(seen).all() and np.signbit(u[0, :15]).all()
    transform_weights(weight, seen, u, 1, 3)  # filters 1 and 2 (the parts of one image)
    expected = fresh(weight)
    np.testing.assert_array_equal(u[:, 3:9], expected[:, 3:9])
    assert np.signbit(u[0, :3]).all() and np.signbit(u[0, 9:15]).all()
    np.testing.assert_array_equal(seen[1:3], weight[1:3])


def test_a_weight_changed_in_place_changes_the_next_prediction(rng):
    """The Winograd layers' transformed weights (kept between calls) follow a weight written
    through layer.params, in the compiled plan and layer by layer."""
    conv = {"type": "conv2d", "filters": 40, "kernel_size": 3, "padding": 1}
    body = [conv, {"type": "relu"}, {"type": "maxpool2d", "pool_size": 2}, {"type": "flatten"}]
    spec = {"input_shape": [16, 14, 14], "layers": [*body, {"type": "dense", "units": 3}]}
    net = cnntool.Network.from_spec(spec)
    assert net.layers[0].winograd_inference and net.plan is not None
    x = rng.standard_normal((1, 16, 14, 14)).astype(np.float32)
    before = net.predict_proba(x).copy()
    net.layers[0].params["weight"][3, 5, 1, 1] += 2.0
    after = net.predict_proba(x).copy()
    assert np.abs(after - before).max() > 1e-3
    copy = cnntool.Network.from_spec(spec)
    np.copyto(copy.flat_params, net.flat_params)
    np.testing.assert_array_equal(after, copy.predict_proba(x))
    layers = cnntool.Network.from_spec(spec)
    layers.use_plan = False
    np.copyto(layers.flat_params, net.flat_params)
    np.testing.assert_allclose(layers.predict_proba(x), after, rtol=1e-5, atol=1e-6)
    layers.layers[0].params["weight"][0, 0, 0, 0] -= 3.0
    np.copyto(net.flat_params, layers.flat_params)
    np.testing.assert_allclose(net.predict_proba(x), layers.predict_proba(x), rtol=1e-5, atol=1e-6)
    assert np.abs(layers.predict_proba(x) - after).max() > 1e-3


def conv_pads(layer):
    return layer.padding(layer.input_shape)


@pytest.mark.parametrize("channels,filters,kernel,stride,padding,use_bias,height,width", CONV_CASES)
def test_conv2d_matches_reference(rng, channels, filters, kernel, stride, padding, use_bias, height, width):
    config = {
        "type": "conv2d",
        "filters": filters,
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "use_bias": use_bias,
    }
    layer = make_layer(config, (channels, height, width))
    if use_bias:
        layer.params["bias"][:] = rng.standard_normal(filters)
    x = rng.standard_normal((3, channels, height, width)).astype(np.float32)
    out = layer.forward(x)
    st = (stride, stride) if isinstance(stride, int) else stride
    pads = conv_pads(layer)
    expected = reference.conv2d(x, layer.params["weight"], layer.params.get("bias"), st, pads)
    assert out.shape == expected.shape == (3, *layer.output_shape)
    np.testing.assert_allclose(out, expected, **F32)

    grad_out = rng.standard_normal(out.shape).astype(np.float32)
    grad_x = layer.backward(grad_out)
    dx, dw, db = reference.conv2d_backward(x, layer.params["weight"], grad_out, st, pads)
    np.testing.assert_allclose(grad_x, dx, **F32)
    np.testing.assert_allclose(layer.grads["weight"], dw, rtol=1e-4, atol=3e-4)
    if use_bias:
        np.testing.assert_allclose(layer.grads["bias"], db, rtol=1e-4, atol=3e-4)
    else:
        assert "bias" not in layer.params


def test_conv2d_same_padding_keeps_size_at_stride_one():
    layer = make_layer({"type": "conv2d", "filters": 2, "kernel_size": 4, "padding": "same"}, (1, 6, 7))
    assert layer.output_shape == (2, 6, 7)
    # Even kernel: the extra row and column of zeros go bottom and right, as in TF and PyTorch.
    assert layer.padding(layer.input_shape) == (1, 1, 2, 2)


def test_conv2d_reuses_buffers_and_handles_batch_size_change(rng):
    layer = make_layer({"type": "conv2d", "filters": 2, "kernel_size": 3}, (1, 5, 5))
    x4 = rng.standard_normal((4, 1, 5, 5)).astype(np.float32)
    first = layer.forward(x4)
    again = layer.forward(x4)
    assert first is again
    x1 = x4[:1].copy()
    np.testing.assert_allclose(layer.forward(x1), layer.forward(x4)[:1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_features,units,use_bias", [(7, 3, True), (20, 1, False), (1, 5, True)])
def test_dense_matches_reference(rng, in_features, units, use_bias):
    layer = make_layer({"type": "dense", "units": units, "use_bias": use_bias}, (in_features,))
    if use_bias:
        layer.params["bias"][:] = rng.standard_normal(units)
    x = rng.standard_normal((4, in_features)).astype(np.float32)
    w = layer.params["weight"].astype(np.float64)
    expected = x @ w.T + (layer.params["bias"] if use_bias else 0)
    np.testing.assert_allclose(layer.forward(x), expected, **F32)
    g = rng.standard_normal((4, units)).astype(np.float32)
    np.testing.assert_allclose(layer.backward(g), g @ w, **F32)
    np.testing.assert_allclose(layer.grads["weight"], g.T.astype(np.float64) @ x, **F32)
    if use_bias:
        np.testing.assert_allclose(layer.grads["bias"], g.sum(axis=0), **F32)


@pytest.mark.parametrize("pool,stride", [(2, None), (3, 2), ((2, 3), (1, 2)), (2, 1)])
def test_maxpool2d_matches_reference(rng, pool, stride):
    config = {"type": "maxpool2d", "pool_size": pool}
    if stride is not None:
        config["stride"] = stride
    layer = make_layer(config, (3, 7, 8))
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    pp = (pool, pool) if isinstance(pool, int) else pool
    st = pp if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    expected, winners = reference.maxpool2d(x, pp, st)
    np.testing.assert_array_equal(layer.forward(x), expected.astype(np.float32))
    g = rng.standard_normal(expected.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(g), reference.maxpool2d_backward(x.shape, winners, g), **F32)


def test_maxpool2d_ties_route_gradient_to_first_maximum():
    layer = make_layer({"type": "maxpool2d", "pool_size": 2}, (1, 2, 2))
    x = np.ones((1, 1, 2, 2), np.float32)
    layer.forward(x)
    grad = layer.backward(np.full((1, 1, 1, 1), 5.0, np.float32))
    np.testing.assert_array_equal(grad[0, 0], [[5.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("shape", [(3, 2, 4, 5), (6, 11)])
def test_relu_matches_reference(rng, shape):
    layer = make_layer({"type": "relu"}, shape[1:])
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(layer.forward(x), np.maximum(x, 0))
    g = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(g), np.where(x > 0, g, 0))


def test_flatten_is_c_order_view(rng):
    layer = make_layer({"type": "flatten"}, (2, 3, 4))
    x = rng.standard_normal((5, 2, 3, 4)).astype(np.float32)
    out = layer.forward(x)
    assert out.shape == (5, 24)
    np.testing.assert_array_equal(out, x.reshape(5, -1))
    assert np.shares_memory(out, x)
    np.testing.assert_array_equal(layer.backward(out), x)


def test_softmax_matches_reference(rng):
    layer = make_layer({"type": "softmax"}, (6,))
    x = (rng.standard_normal((4, 6)) * 5).astype(np.float32)
    y = reference.softmax(x)
    np.testing.assert_allclose(layer.forward(x), y, rtol=1e-5, atol=1e-6)
    g = rng.standard_normal((4, 6))
    expected = y * (g - (g * y).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(layer.backward(g.astype(np.float32)), expected, rtol=1e-4, atol=1e-6)


def test_softmax_is_stable_for_huge_logits():
    layer = make_layer({"type": "softmax"}, (3,))
    out = layer.forward(np.array([[1000.0, 0.0, -1000.0], [-1e30, -1e30, -1e30]], np.float32))
    np.testing.assert_allclose(out, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-6)
