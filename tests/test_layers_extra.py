"""batchnorm2d/1d, dropout, avgpool2d, global_avgpool2d, sigmoid and tanh: numpy references,
finite differences, the plugin kit's conformance checks, the compiled plan against the
layer-by-layer path, threads, and PyTorch on the same weights and data."""

import math

import numpy as np
import pytest

import cnntool
from cnntool.errors import SpecError
from cnntool.testing import check_gradients, check_layer, make_layer

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# --- numpy references (float64, no code shared with the kernels) ---------------------------


def batchnorm_reference(x, weight, bias, running_mean, running_var, momentum, eps, training):
    """(out, new running mean, new running var) as PyTorch defines batch normalisation."""
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    x = x.astype(np.float64)
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        count = x.size // x.shape[1]
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * count / (count - 1)
    else:
        mean, var = running_mean, running_var
    out = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * weight.reshape(shape)
    return out + bias.reshape(shape), running_mean, running_var


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def dropout_mask_reference(shape, rate, seed, step, salt, offset=0):
    """The documented hash in Python integers: keep element i of example e when the top 24
    bits of mix64(key(e) + (i + 1) * golden) reach rate * 2^24."""
    n, size = shape[0], int(np.prod(shape[1:]))
    threshold = int(rate * 16777216.0)
    mask = np.zeros((n, size), np.float32)
    for e in range(n):
        key = mix64((seed ^ (salt * GOLDEN & M64)) & M64)
        key = mix64((key + step * GOLDEN) & M64)
        key = mix64((key + (offset + e) * GOLDEN) & M64)
        for i in range(size):
            mask[e, i] = (mix64((key + (i + 1) * GOLDEN) & M64) >> 40) >= threshold
    return mask.reshape(shape)


def pool_windows(height, width, ph, pw, sh, sw):
    h, w = height, width
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    return [
        (p, q, (slice(p * sh, p * sh + ph), slice(q * sw, q * sw + pw))) for p in range(oh) for q in range(ow)
    ]


def avgpool_reference(x, ph, pw, sh, sw):
    windows = pool_windows(*x.shape[2:], ph, pw, sh, sw)
    oh, ow = windows[-1][0] + 1, windows[-1][1] + 1
    out = np.zeros((*x.shape[:2], oh, ow))
    for p, q, (rows, cols) in windows:
        out[:, :, p, q] = x[:, :, rows, cols].astype(np.float64).mean(axis=(2, 3))
    return out


def avgpool_backward_reference(x_shape, grad_out, ph, pw, sh, sw):
    dx = np.zeros(x_shape)
    for p, q, (rows, cols) in pool_windows(*x_shape[2:], ph, pw, sh, sw):
        dx[:, :, rows, cols] += grad_out[:, :, p, q, None, None] / (ph * pw)
    return dx


# --- forward and backward against the references ------------------------------------------


@pytest.mark.parametrize("kind,shape", [("batchnorm2d", (3, 5, 4)), ("batchnorm1d", (6,))])
def test_batchnorm_matches_reference_in_both_modes(kind, shape, rng):
    layer = make_layer({"type": kind, "momentum": 0.2, "eps": 1e-3}, shape)
    assert layer.per_example is False
    np.testing.assert_array_equal(layer.params["weight"], 1.0)
    np.testing.assert_array_equal(layer.params["bias"], 0.0)
    np.testing.assert_array_equal(layer.state["running_mean"], 0.0)
    np.testing.assert_array_equal(layer.state["running_var"], 1.0)
    layer.params["weight"][:] = rng.uniform(0.5, 1.5, shape[0])
    layer.params["bias"][:] = rng.normal(size=shape[0])
    weight, bias = layer.params["weight"].astype(np.float64), layer.params["bias"].astype(np.float64)
    running = (layer.state["running_mean"].astype(np.float64), layer.state["running_var"].astype(np.float64))
    for _ in range(3):
        x = (rng.standard_normal((4, *shape)) * 2 + 1).astype(np.float32)
        expected, *running = batchnorm_reference(x, weight, bias, *running, 0.2, 1e-3, True)
        np.testing.assert_allclose(layer.forward(x, training=True), expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.state["running_mean"], running[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.state["running_var"], running[1], rtol=1e-5, atol=1e-6)
    expected, _, _ = batchnorm_reference(x, weight, bias, *running, 0.2, 1e-3, False)
    np.testing.assert_allclose(layer.forward(x, training=False), expected, rtol=1e-4, atol=1e-5)
    # Inference is an affine map: dx = weight / sqrt(running_var + eps) * g.
    grad = rng.standard_normal(expected.shape).astype(np.float32)
    scale = (weight / np.sqrt(running[1] + 1e-3)).reshape((1, -1) + (1,) * (len(shape) - 1))
    np.testing.assert_allclose(layer.backward(grad), grad * scale, rtol=1e-4, atol=1e-5)


def test_batchnorm_keeps_running_var_for_a_single_value_per_channel():
    layer = make_layer({"type": "batchnorm1d"}, (3,))
    layer.forward(np.array([[1.0, 2.0, 3.0]], np.float32), training=True)
    np.testing.assert_allclose(layer.state["running_mean"], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(layer.state["running_var"], 1.0)


def test_dropout_mask_is_the_documented_hash_and_scales_survivors(rng):
    layer = make_layer({"type": "dropout", "rate": 0.3, "name": "drop"}, (2, 3, 4))
    layer.random[:] = (42, 7)
    x = rng.standard_normal((5, 2, 3, 4)).astype(np.float32)
    out = layer.forward(x, training=True).copy()
    mask = dropout_mask_reference(x.shape, 0.3, 42, 7, layer.salt)
    np.testing.assert_array_equal(layer._buffers["mask"], mask)
    np.testing.assert_allclose(out, x * mask / np.float32(0.7), rtol=1e-6)
    grad = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(grad), grad * mask / np.float32(0.7), rtol=1e-6)
    # Inference is the identity, forward and backward.
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(grad), grad)


def test_dropout_keep_rate_and_independence():
    layer = make_layer({"type": "dropout", "rate": 0.25}, (1000,))
    x = np.ones((200, 1000), np.float32)
    masks = []
    for step in range(3):
        layer.random[:] = (5, step)
        layer.forward(x, training=True)
        masks.append(layer._buffers["mask"].copy())
    for mask in masks:
        # 200,000 Bernoulli(0.75) draws: the standard deviation of the rate is about 0.001.
        assert abs(mask.mean() - 0.75) < 0.005, mask.mean()
    # Different steps give unrelated masks (agreement 0.75² + 0.25² = 0.625 by chance).
    assert abs((masks[0] == masks[1]).mean() - 0.625) < 0.005
    # Rows (examples) and columns (elements) are not correlated with their neighbours.
    assert abs((masks[0][1:] == masks[0][:-1]).mean() - 0.625) < 0.005
    assert abs((masks[0][:, 1:] == masks[0][:, :-1]).mean() - 0.625) < 0.005
    layer.random[:] = (5, 0)
    layer.forward(x, training=True)
    np.testing.assert_array_equal(layer._buffers["mask"], masks[0])


def test_dropout_rate_zero_keeps_everything(rng):
    layer = make_layer({"type": "dropout", "rate": 0.0}, (8,))
    x = rng.standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(layer.forward(x, training=True), x)


@pytest.mark.parametrize("pool,stride", [(2, None), (3, 1), ((2, 3), (1, 2))])
def test_avgpool_matches_reference(pool, stride, rng):
    config = {"type": "avgpool2d", "pool_size": pool}
    if stride is not None:
        config["stride"] = stride
    layer = make_layer(config, (2, 7, 8))
    ph, pw, sh, sw = layer.window
    x = rng.standard_normal((3, 2, 7, 8)).astype(np.float32)
    expected = avgpool_reference(x, ph, pw, sh, sw)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-5, atol=1e-6)
    grad = rng.standard_normal(expected.shape).astype(np.float32)
    np.testing.assert_allclose(
        layer.backward(grad), avgpool_backward_reference(x.shape, grad, ph, pw, sh, sw), rtol=1e-5, atol=1e-6
    )


def test_global_avgpool_and_activations_match_numpy(rng):
    x = (rng.standard_normal((3, 4, 5, 6)) * 4).astype(np.float32)
    x[0, 0, 0, :2] = (-100.0, 100.0)  # no overflow at the extremes
    pool = make_layer({"type": "global_avgpool2d"}, (4, 5, 6))
    assert pool.output_shape == (4,)
    np.testing.assert_allclose(pool.forward(x), x.astype(np.float64).mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    grad = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(
        pool.backward(grad), np.broadcast_to(grad[:, :, None, None] / 30, x.shape), rtol=1e-6
    )
    x64 = x.astype(np.float64)
    g = rng.standard_normal(x.shape).astype(np.float32)
    for kind, function, derivative in (
        ("sigmoid", lambda v: 1 / (1 + np.exp(-v)), lambda y: y * (1 - y)),
        ("tanh", np.tanh, lambda y: 1 - y * y),
    ):
        layer = make_layer({"type": kind}, (4, 5, 6))
        y = function(x64)
        out = layer.forward(x)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.backward(g), g * derivative(y), rtol=1e-4, atol=1e-6)


# --- finite differences and conformance ----------------------------------------------------

CONFIGS = [
    ({"type": "batchnorm2d"}, (3, 4, 4)),
    ({"type": "batchnorm1d", "momentum": 0.3}, (5,)),
    ({"type": "dropout", "rate": 0.4}, (2, 3, 3)),
    ({"type": "dropout"}, (7,)),
    ({"type": "avgpool2d", "pool_size": 2}, (2, 6, 6)),
    ({"type": "avgpool2d", "pool_size": 3, "stride": 2}, (2, 7, 7)),
    ({"type": "global_avgpool2d"}, (3, 4, 5)),
    ({"type": "sigmoid"}, (2, 3, 3)),
    ({"type": "tanh"}, (6,)),
]


@pytest.mark.parametrize("config,input_shape", CONFIGS, ids=lambda v: str(v))
def test_gradients_by_finite_differences_in_both_modes(config, input_shape):
    for training in (False, True):
        layer = make_layer(config, input_shape, seed=2)
        for key, value in layer.params.items():
            value += np.float32(0.3) if key == "weight" else np.float32(0.1)
        for value in layer.state.values():
            value += np.float32(0.2)
        layer.random[:] = (3, 1)  # a fixed dropout mask for every evaluation
        worst = check_gradients(layer, batch=4, training=training, eps=1e-2, rtol=3e-2, atol=3e-3)
        assert set(worst) == {"x", *layer.params}


@pytest.mark.parametrize("config,input_shape", CONFIGS, ids=lambda v: str(v))
def test_plugin_kit_conformance(config, input_shape):
    for result in check_layer(config, input_shape):
        assert result.ok, f"{result.check}: {result.message}"


def test_invalid_configs_are_spec_errors():
    with pytest.raises(
        SpecError, match=r"layer 0 \(dropout\) rate: Input should be less than 1, received 1.0"
    ):
        cnntool.Network.from_spec({"input_shape": [1, 4, 4], "layers": [{"type": "dropout", "rate": 1.0}]})
    with pytest.raises(SpecError, match=r"layer 0 'batchnorm1d_1' \(batchnorm1d\): expected a flat input"):
        cnntool.Network.from_spec(
            {"input_shape": [2, 4, 4], "layers": [{"type": "batchnorm1d"}, {"type": "flatten"}]}
        )
    with pytest.raises(SpecError, match=r"layer 1 'batchnorm2d_1' \(batchnorm2d\): expected an image input"):
        cnntool.Network.from_spec(
            {"input_shape": [2, 4, 4], "layers": [{"type": "flatten"}, {"type": "batchnorm2d"}]}
        )


# --- inside networks: the compiled plan, threads, determinism ------------------------------

NETWORK = {
    "input_shape": [2, 12, 12],
    "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3},
        {"type": "batchnorm2d"},
        {"type": "tanh"},
        {"type": "avgpool2d", "pool_size": 2},
        {"type": "dropout", "rate": 0.3},
        {"type": "conv2d", "filters": 6, "kernel_size": 3, "padding": "same"},
        {"type": "sigmoid"},
        {"type": "global_avgpool2d"},
        {"type": "dense", "units": 8},
        {"type": "batchnorm1d"},
        {"type": "relu"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 3},
    ],
}
DROPOUT_ONLY = {
    "input_shape": [1, 8, 8],
    "layers": [
        {"type": "conv2d", "filters": 3, "kernel_size": 3},
        {"type": "dropout", "rate": 0.5},
        {"type": "avgpool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 3},
    ],
}


def pair_of_networks(spec):
    fused, plain = cnntool.Network.from_spec(spec, seed=3), cnntool.Network.from_spec(spec, seed=3)
    plain.use_plan = False
    assert fused.plan is not None and plain.plan is None
    return fused, plain


def test_plan_matches_layer_by_layer(rng):
    fused, plain = pair_of_networks(NETWORK)
    x = rng.standard_normal((9, 2, 12, 12)).astype(np.float32)
    labels = rng.integers(0, 3, 9).astype(np.int64)
    for _ in range(2):
        a, b = fused.forward(x, training=True), plain.forward(x, training=True)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        grad = rng.standard_normal(a.shape).astype(np.float32)
        np.testing.assert_allclose(fused.backward(grad), plain.backward(grad), rtol=1e-4, atol=1e-6)
        for key, value in plain.grads().items():
            np.testing.assert_allclose(fused.grads()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    for key, value in plain.state().items():
        np.testing.assert_allclose(fused.state()[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.predict_proba(x), plain.predict_proba(x), rtol=1e-5, atol=1e-6)
    a, b = fused.train_step(x, labels), plain.train_step(x, labels)
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == b[1]
    for key, value in plain.grads().items():
        np.testing.assert_allclose(fused.grads()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    # Every training forward draws new masks; inference is deterministic.
    assert not np.array_equal(fused.forward(x, training=True), fused.forward(x, training=True))
    np.testing.assert_array_equal(fused.forward(x), fused.forward(x))


def test_masks_do_not_depend_on_threads(rng):
    from cnntool.system.threads import set_threads

    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 32).astype(np.int64)
    grads = {}
    try:
        for threads in (1, 2):
            set_threads(threads)
            net = cnntool.Network.from_spec(DROPOUT_ONLY, seed=1)
            net.train_step(x, labels)
            grads[threads] = net.flat_grads.copy()
    finally:
        set_threads(None)
    # The same masks, so the same gradients up to the order of summation across pieces.
    np.testing.assert_allclose(grads[1], grads[2], rtol=1e-5, atol=1e-7)
    assert np.count_nonzero(grads[1]) > 0


def test_batchnorm_networks_cut_across_threads_agree_with_one_thread(rng):
    """Cut in two, the pieces meet at each batch norm (1d and 2d) for the whole batch's
    statistics; dropout masks follow each example's place in the batch."""
    from cnntool.system.threads import set_threads

    x = rng.standard_normal((32, 2, 12, 12)).astype(np.float32)
    labels = rng.integers(0, 3, 32).astype(np.int64)
    results = []
    try:
        for threads in (1, 2):
            set_threads(threads)
            net = cnntool.Network.from_spec(NETWORK, seed=1)
            assert len(net.pieces(32)) == threads + 1
            loss, _ = net.train_step(x, labels)
            results.append((loss, net.flat_grads.copy(), net.flat_state.copy()))
    finally:
        set_threads(None)
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    # The biases of the layers before a batch norm have gradient 0 up to rounding (the norm
    # takes the mean out), which differs in sign between the cuts: they are checked small,
    # the others equal.
    before_norm = np.zeros(net.flat_grads.size, bool)
    for name in ("conv2d_1.bias", "dense_1.bias"):
        offset, shape = net.param_offsets[name]
        before_norm[offset : offset + math.prod(shape)] = True
    for _, grads, _ in results:
        assert np.abs(grads[before_norm]).max() < 1e-4
    np.testing.assert_allclose(results[0][1][~before_norm], results[1][1][~before_norm], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-5, atol=1e-7)


# --- PyTorch on the same weights and data --------------------------------------------------


@pytest.mark.parametrize("kind,shape", [("batchnorm2d", (3, 5, 4)), ("batchnorm1d", (6,))])
def test_batchnorm_matches_pytorch(kind, shape, rng):
    torch = pytest.importorskip("torch")
    layer = make_layer({"type": kind}, shape)
    module = (torch.nn.BatchNorm2d if kind == "batchnorm2d" else torch.nn.BatchNorm1d)(shape[0])
    assert (module.momentum, module.eps) == (layer.config.momentum, layer.config.eps)
    weight, bias = rng.uniform(0.5, 1.5, shape[0]), rng.normal(size=shape[0])
    layer.params["weight"][:], layer.params["bias"][:] = weight, bias
    with torch.no_grad():
        module.weight.copy_(torch.tensor(weight)), module.bias.copy_(torch.tensor(bias))
    for training in (True, True, True, False):
        module.train(training)
        x = (rng.standard_normal((5, *shape)) * 3 - 1).astype(np.float32)
        grad = rng.standard_normal(x.shape).astype(np.float32)
        tx = torch.tensor(x, requires_grad=True)
        module.zero_grad()
        out = module(tx)
        out.backward(torch.tensor(grad))
        np.testing.assert_allclose(
            layer.forward(x, training=training), out.detach().numpy(), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(layer.backward(grad), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.grads["weight"], module.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.grads["bias"], module.bias.grad.numpy(), rtol=1e-4, atol=1e-5)
        for key in ("running_mean", "running_var"):
            np.testing.assert_allclose(layer.state[key], getattr(module, key).numpy(), rtol=1e-5, atol=1e-6)


def test_dropout_matches_pytorch_with_the_mask_fixed(rng):
    torch = pytest.importorskip("torch")
    layer = make_layer({"type": "dropout", "rate": 0.35}, (4, 6, 6))
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    grad = rng.standard_normal(x.shape).astype(np.float32)
    out = layer.forward(x, training=True)
    mask = torch.tensor(layer._buffers["mask"])
    tx = torch.tensor(x, requires_grad=True)
    expected = tx * mask / (1 - 0.35)
    expected.backward(torch.tensor(grad))
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.backward(grad), tx.grad.numpy(), rtol=1e-6, atol=1e-7)
    module = torch.nn.Dropout(0.35).eval()
    np.testing.assert_array_equal(layer.forward(x), module(torch.tensor(x)).numpy())


def test_pooling_and_activations_match_pytorch(rng):
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal((2, 3, 9, 8)) * 3).astype(np.float32)
    cases = [
        ({"type": "avgpool2d", "pool_size": 3, "stride": 2}, torch.nn.AvgPool2d(3, stride=2)),
        ({"type": "avgpool2d", "pool_size": 2}, torch.nn.AvgPool2d(2)),
        (
            {"type": "global_avgpool2d"},
            torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
        ),
        ({"type": "sigmoid"}, torch.nn.Sigmoid()),
        ({"type": "tanh"}, torch.nn.Tanh()),
    ]
    for config, module in cases:
        layer = make_layer(config, (3, 9, 8))
        tx = torch.tensor(x, requires_grad=True)
        out = module(tx)
        grad = rng.standard_normal(tuple(out.shape)).astype(np.float32)
        out.backward(torch.tensor(grad))
        np.testing.assert_allclose(layer.forward(x), out.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.backward(grad), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


FOLDED = {
    "input_shape": [16, 12, 11],
    "layers": [
        # stride 1, columns kept; Winograd in inference (16 x 16 pairs); stride 2 with a bias
        {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": 1, "use_bias": False, "name": "narrow"},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": 1},
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": 1, "use_bias": False},
        {"type": "batchnorm2d", "eps": 0.01},
        {"type": "relu"},
        {"type": "conv2d", "filters": 5, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 4},
    ],
}


def test_inference_folds_batchnorm_into_the_convolution_before_it(rng):
    """For predict and evaluate, conv2d -> batchnorm2d -> relu is one kernel with the batch
    norm's running statistics folded into the weights: the same probabilities as the layers
    one by one, with statistics and affine parameters far from their initial values."""
    fused, plain = pair_of_networks(FOLDED)
    source = fused.plan.source
    predict = source[source.index("def predict(") : source.index("def predict_parts(")]
    assert predict.count("(computed by an earlier layer's kernel)") == 6
    for net in (fused, plain):
        for layer in net.layers:
            if layer.config.type == "batchnorm2d":
                channels = layer.params["weight"].shape[0]
                layer.params["weight"][:] = np.linspace(-1.5, 2.0, channels)
                layer.params["bias"][:] = np.linspace(0.3, -0.4, channels)
                layer.state["running_mean"][:] = np.linspace(-0.5, 0.7, channels)
                layer.state["running_var"][:] = np.linspace(0.2, 3.0, channels)
            if layer.config.type == "conv2d" and layer.config.use_bias:
                layer.params["bias"][:] = np.linspace(-0.2, 0.2, layer.params["bias"].size)
    for n in (1, 5):
        x = rng.standard_normal((n, 16, 12, 11)).astype(np.float32)
        np.testing.assert_allclose(fused.predict_proba(x), plain.predict_proba(x), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-4, atol=1e-5)
        labels = rng.integers(0, 4, n).astype(np.int64)
        predictions = np.empty(n, np.int64)
        loss, _ = fused.evaluate_batch(x, labels, predictions)
        np.testing.assert_array_equal(predictions, plain.forward(x).argmax(axis=1))
        expected = -np.log(plain.predict_proba(x)[np.arange(n), labels]).sum()
        assert loss == pytest.approx(expected, rel=1e-4)
