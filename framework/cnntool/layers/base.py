"""What a layer is: a config, parameters with their gradients, a forward and a backward.

A layer is built in two steps, as in Keras: `__init__(config)` only stores the validated
hyperparameters; `build(input_shape, rng)` checks the input shape, allocates the parameters
and returns the output shape. Shapes never include the batch axis: an image layer sees
`(C, H, W)`, a dense layer `(features,)`.

A layer computes with kernels (numba functions in `cnntool.kernels`). It can say which
kernels it calls, on which arrays, instead of writing `forward`/`backward` itself:

    def buffers(self):            # per-example arrays: outputs, saved values, input gradients
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape)}
    def forward_calls(self, training):
        return [(relu_forward, (X, buf("out")))]
    def backward_calls(self, need_grad_x):
        return [(relu_backward, (GRAD_OUT, buf("out"), buf("grad_x")))]

Declared once, those calls run in two ways: one by one from Python (`Layer.forward`,
`Layer.backward` below), or compiled together with every other layer's calls into a single
numba function per network (`cnntool.compile.plan`), which is what makes small networks fast.
A layer that writes `forward`/`backward` by hand instead still works everywhere; networks
containing one simply run layer by layer.

A merge layer (`add`, `concat`) reads several layers: it sets `multi_input = True`, and then
its shapes are computed from a tuple of input shapes, `forward` takes a list of arrays, and
`backward` returns one gradient per input (`backward_results` says where each lies). In its
kernel calls, `xs(k)` is input k.

`forward` and `backward` return arrays the layer owns and reuses on the next call with the
same batch size, so a training step allocates nothing; copy a result to keep it.
`backward` overwrites `grads` (it does not accumulate). Parameters may be moved into one
flat array of the network after `build`: always reach them through `self.params[...]`.

For `cnntool export`, a layer may lower its inference form to ONNX nodes (`onnx_nodes`, given
an `OnnxBuilder` bound to the layer and the names of its input tensors; it returns the name of
its output tensor):

    def onnx_nodes(self, onnx, inputs):
        return onnx.node("Relu", inputs)

A layer without it cannot be exported; the error names the layer and its distribution.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cnntool.errors import SpecError

if TYPE_CHECKING:
    from cnntool.layers.epilogue import Epilogue

Shape = tuple[int, ...]
# The input shape a layer is given: a Shape, or for a merge layer (`multi_input`) a tuple of
# them, one per input. Any, as which of the two follows `multi_input`, which mypy cannot see.
InputShape = Any


class OnnxBuilder(Protocol):
    """What `Layer.onnx_nodes` writes into, bound to the layer (`cnntool export` passes one,
    see `cnntool.interchange.onnx_export.LayerNodes`): `param(key)` adds the layer's parameter
    or state array as an initializer and returns its name, `constant(key, array)` any other
    array, `node(op_type, inputs, **attributes)` a node, returning its output's name."""

    def param(self, key: str, shape: tuple[int, ...] | None = None) -> str: ...

    def constant(self, key: str, array: np.ndarray) -> str: ...

    def node(self, op_type: str, inputs: list[str], **attributes: Any) -> str: ...


# When set, layers running their declared calls one by one hand each call to it as
# (layer, kernel, arrays) instead of calling the kernel: `tools/bench.py --profile` times
# every kernel this way.
KERNEL_TIMER: Callable[[Any, Any, list], None] | None = None


class Pooling(Protocol):
    """A pooling layer (one whose `reduction` is set), as a layer fusing it reads it: its
    window, (pool height, pool width, stride down, stride across)."""

    @property
    def window(self) -> tuple[int, int, int, int]: ...


class Ref(NamedTuple):
    """An array named in a kernel call: the layer's input `x` (input k of a merge layer is
    `Ref("x", str(k))`), the incoming `grad_out`, or a parameter, gradient, state,
    per-example buffer or scratch array by name. (`step` is for the plan's fused kernels,
    which may name the buffer of a layer `step` places later.)"""

    kind: str
    name: str = ""
    step: int = 0


class Either(NamedTuple):
    """The array `yes` when `flag`, else `no`: the choice is made when the kernel is called
    (in a compiled plan, by a flag among the plan's numbers), so that the plan's code is the
    same either way and a network whose shapes tip the choice reuses compiled code
    (Conv2D's kept or rebuilt columns). The two must be arrays of one kind: both with the
    batch axis or both without, of one dtype and rank."""

    flag: bool
    yes: Ref
    no: Ref


class Sync:
    """A point in a layer's training calls where the pieces of a batch cut across threads
    meet, for statistics of the whole batch (batch normalisation): the calls before it leave
    each piece's share in `array` (a scratch array of the layer); `combine` (numpy, run in
    Python) turns the list of every piece's share into the batch's, which each piece's
    `array` then holds for the calls after it. A batch run as one piece (layer by layer, or
    too small to cut) skips it: its share is the batch's.

    A layer holding one in its training calls sets `per_example = False` and `syncs = True`;
    its inference must then be per example."""

    __slots__ = ("array", "combine")

    def __init__(self, array: Ref, combine: Callable[[list[np.ndarray]], np.ndarray]) -> None:
        self.array = array
        self.combine = combine

    def __repr__(self) -> str:
        return f"Sync({self.array}, {getattr(self.combine, '__name__', self.combine)})"


class Array(NamedTuple):
    """Shape (without the batch axis, for buffers) and dtype of an array a layer needs."""

    shape: Shape
    dtype: Any = np.float32


# CPython compiles a call of more positional arguments than this into CALL_FUNCTION_EX,
# which numba's bytecode reader rejects ("CALL_FUNCTION_EX with **kwargs not supported").
MAX_KERNEL_ARGUMENTS = 30


class Call:
    """One kernel call of a layer, its arguments given by the kernel's parameter names:

        Call(relu_forward, x=X, out=buf("out"))

    checked against the kernel's signature when the call is made (when the layer declares
    it), so a missing, misspelt or extra argument is an error naming the kernel and the
    parameter, not a wrong array silently passed in a position. `kernel, args = call`
    gives the kernel and its arguments in the kernel's order."""

    __slots__ = ("args", "kernel")

    def __init__(self, kernel: Callable, /, **arguments: Any) -> None:
        names = kernel_parameters(kernel)
        missing = [name for name in names if name not in arguments]
        unknown = [name for name in arguments if name not in names]
        if missing or unknown:
            problems = [
                f"missing {', '.join(missing)}" if missing else "",
                f"unknown {', '.join(unknown)}" if unknown else "",
            ]
            raise TypeError(
                f"a call of kernel {getattr(kernel, '__name__', kernel)}({', '.join(names)}): "
                + "; ".join(p for p in problems if p)
            )
        if len(names) > MAX_KERNEL_ARGUMENTS:
            raise TypeError(
                f"kernel {getattr(kernel, '__name__', kernel)} takes {len(names)} parameters; a compiled "
                f"plan can pass at most {MAX_KERNEL_ARGUMENTS} (Python compiles a longer call into a form "
                "numba cannot compile): pass arrays of one shape stacked into one"
            )
        self.kernel = kernel
        self.args = tuple(arguments[name] for name in names)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.kernel, self.args))

    def __repr__(self) -> str:
        return f"Call({getattr(self.kernel, '__name__', self.kernel)}, {self.args})"


@functools.cache
def kernel_parameters(kernel: Callable) -> tuple[str, ...]:
    """The parameter names of a kernel (of the Python function a numba dispatcher wraps)."""
    return tuple(inspect.signature(getattr(kernel, "py_func", kernel)).parameters)


# What Layer._run runs: kernel calls, Sync points, and (kernel, arguments) pairs, as
# cnntool.testing.kit passes kernels wrapped to be bounds-checked.
Step = Call | Sync | tuple[Callable[..., Any], tuple[Any, ...]]

X = Ref("x")
GRAD_OUT = Ref("grad_out")
# For layers that draw random numbers (dropout): the network's random stream, an int64
# array [seed, step] whose step advances with every forward pass in training mode, and
# the index within the whole batch of the first example the call sees (a batch may be cut
# into pieces across threads). Random numbers made from these never depend on the cut.
RANDOM = Ref("random")
OFFSET = Ref("offset")


def xs(k: int) -> Ref:
    """Input k of a merge layer."""
    return Ref("x", str(k))


def param(name: str) -> Ref:
    return Ref("param", name)


def grad(name: str) -> Ref:
    return Ref("grad", name)


def state(name: str) -> Ref:
    return Ref("state", name)


def buf(name: str) -> Ref:
    return Ref("buf", name)


def scratch(name: str) -> Ref:
    return Ref("scratch", name)


class ShapeError(SpecError):
    """A layer cannot take the input shape it is given. The network adds which layer."""


class LayerConfig(BaseModel):
    """Fields every layer config has. Subclasses add `type: Literal[...]` and hyperparameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$",
        description="Stable layer name; parameter keys are '<name>.<param>'.",
    )
    inputs: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Names of the earlier layers this one reads ('input': the network input); "
        "without it, the layer before (or the network input, for the first).",
    )


class Layer:
    """Base class of every layer type, built-in or from a plugin."""

    Config: ClassVar[type[LayerConfig]] = LayerConfig
    # Where forward and backward leave their results, for layers that declare kernel calls.
    forward_result: ClassVar[Ref] = buf("out")
    backward_result: ClassVar[Ref] = buf("grad_x")
    # True for layers whose output is their input reshaped (flatten): no kernel, no copy.
    view: ClassVar[bool] = False
    # False for layers whose result for one example depends on the others in the batch
    # (batch statistics): their networks are never split across threads by examples, unless
    # the layer `syncs`: its training calls meet at Sync points (see Sync), and it computes
    # each example on its own in inference.
    per_example: ClassVar[bool] = True
    syncs: ClassVar[bool] = False
    # True for layers reading several inputs (merge layers: add, concat); see the module docs.
    multi_input: ClassVar[bool] = False
    # How many inputs a layer takes: (fewest, most); None for no upper bound.
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    # For an elementwise activation: its name ("relu"), which a layer before it may apply
    # inside its own kernels instead (see `fuses`).
    epilogue: ClassVar[str | Epilogue | None] = None
    # For a pooling layer: "max" or "mean", for layers that fuse a pooling after them.
    reduction: ClassVar[str | None] = None

    def __init__(self, config: LayerConfig) -> None:
        self.config = config
        self.name: str = config.name or config.type
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}
        self.input_shape: InputShape = None
        self._output_shape: Shape | None = None  # see output_shape
        # Which layers this one reads, by index in the network (-1: the network input).
        self.sources: tuple[int, ...] = ()
        # False for the first layer of a network while training: its input gradient is
        # never used, so layers may skip computing it.
        self.need_input_grad = True
        # The random stream (see RANDOM); a network shares its own with all its layers.
        self.random = np.zeros(2, np.int64)
        self._buffers: dict[str, np.ndarray] = {}

    @property
    def output_shape(self) -> Shape:
        """The output shape (without the batch axis), which `build` sets: a layer's kernel
        declarations and the network read it only once the layer is built."""
        if self._output_shape is None:
            raise RuntimeError(f"layer {self.name!r} has no output shape before build()")
        return self._output_shape

    @output_shape.setter
    def output_shape(self, shape: Shape) -> None:
        self._output_shape = shape

    # --- shapes: pure functions of the input shape, no allocation -------------------------

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        """The output shape for `input_shape`; raise ShapeError if the input does not fit."""
        return input_shape

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Name and shape of every trained parameter, for this input shape."""
        return {}

    def state_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Name and shape of every non-trained buffer (running statistics and the like)."""
        return {}

    def init_param(self, name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        """Initial value of one parameter: He-normal for weights, zeros for the rest."""
        if name == "weight":
            return he_normal(shape, rng)
        return np.zeros(shape, np.float32)

    def init_state(self, name: str, shape: Shape) -> np.ndarray:
        return np.zeros(shape, np.float32)

    # --- building --------------------------------------------------------------------------

    def build(self, input_shape: InputShape, rng: np.random.Generator | None) -> Shape:
        """Check the input shape, allocate parameters (initialised from `rng`), return the
        output shape. With `rng=None` parameters are zeros, to be filled from a bundle."""
        input_shape = tuple(tuple(shape) for shape in input_shape) if self.multi_input else tuple(input_shape)
        output_shape = self.compute_output_shape(input_shape)
        self.input_shape = input_shape
        self.output_shape = tuple(output_shape)
        self.params = {}
        for key, shape in self.param_shapes(self.input_shape).items():
            if rng is None:
                self.params[key] = np.zeros(shape, np.float32)
            else:
                self.params[key] = np.ascontiguousarray(self.init_param(key, shape, rng), np.float32)
        self.grads = {key: np.zeros_like(value) for key, value in self.params.items()}
        self.state = {
            key: self.init_state(key, shape) for key, shape in self.state_shapes(self.input_shape).items()
        }
        self._buffers = {}
        return self.output_shape

    # --- kernels ---------------------------------------------------------------------------

    def buffers(self) -> dict[str, Array]:
        """Per-example arrays the kernel calls use, by name (shapes without the batch axis)."""
        return {}

    def scratch_arrays(self) -> dict[str, Array]:
        """Fixed-size working arrays the kernel calls use, by name (no batch axis)."""
        return {}

    def forward_calls(self, training: bool) -> Sequence[Call | Sync] | None:
        """The kernel calls of the forward pass, or None if `forward` is written by hand."""
        return None

    def backward_calls(self, need_grad_x: bool) -> Sequence[Call | Sync] | None:
        """The kernel calls of the backward pass; with need_grad_x false the layer may skip
        computing its input gradient (it is the first layer)."""
        return None

    # --- fusion: declared by the layer whose kernels do the work of the next ones ----------

    def fuses(self, activation: Layer) -> bool:
        """Whether this layer's kernels can apply `activation`, the layer right after it (and
        its only reader), themselves: then the compiled plan calls
        `forward_calls(training, relu_into=<the activation's output>)` and
        `backward_calls(need_grad_x, relu_output=<the activation's output>)`, and runs no
        kernel for the activation."""
        return False

    def fuses_pool(self, activation: Layer, pool: Layer) -> bool:
        """Whether, for inference, this layer's kernels can compute `activation` and then
        `pool` (the two layers after it, each the only reader of the one before) in one
        pass: the plan then calls `activation_pool_calls(<the pool's output>)`."""
        return False

    def folds(self, following: Layer) -> bool:
        """Whether, for inference, this layer's kernels can compute `following` (the layer
        right after it, its only reader) too, by folding it into a copy of this layer's
        weights: the plan then calls `folded_calls(following, <following's output>)` and runs
        no kernel for `following`."""
        return False

    def folded_calls(self, following: Layer, out: Ref) -> list[Call]:
        """The inference calls of this layer with the layer `folds` accepted folded in."""
        raise NotImplementedError(f"{type(self).__name__} folds no layer")

    # --- computing -------------------------------------------------------------------------

    def backward_results(self) -> list[Ref]:
        """Where backward leaves the gradient of each input, in the order of the inputs."""
        return [self.backward_result]

    def forward(self, x: Any, *, training: bool = False) -> np.ndarray:
        """Run the declared forward kernels; returns the output buffer. `x` is an array, or
        a list of them for a merge layer."""
        self._x = x
        if self.view:
            return x.reshape(x.shape[0], *self.output_shape)
        calls = self.forward_calls(training)
        if calls is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither forward() nor forward_calls()")
        n = x[0].shape[0] if self.multi_input else x.shape[0]
        return self._run(calls, n, self.forward_result, x, None)

    def backward(self, grad_out: np.ndarray) -> Any:
        """Run the declared backward kernels; returns the input-gradient buffer (a list of
        them, one per input, for a merge layer)."""
        if self.view:
            return grad_out.reshape(grad_out.shape[0], *self.input_shape)
        calls = self.backward_calls(self.need_input_grad)
        if calls is None:
            raise NotImplementedError(
                f"{type(self).__name__} defines neither backward() nor backward_calls()"
            )
        if self.multi_input:
            results = self.backward_results()
            return self._run(calls, grad_out.shape[0], results, self._x, grad_out)
        return self._run(calls, grad_out.shape[0], self.backward_result, self._x, grad_out)

    def _run(self, calls: Sequence[Step], n: int, result: Any, x: Any, grad_out: np.ndarray | None) -> Any:
        def resolve(arg: Any) -> Any:
            if isinstance(arg, Either):
                return resolve(arg.yes if arg.flag else arg.no)
            if not isinstance(arg, Ref):
                # A flag as 0 or 1, as the compiled plan passes it (cnntool.compile.plan): one
                # compiled kernel serves both ways.
                return int(arg) if isinstance(arg, (bool, np.bool_)) else arg
            if arg.kind == "x":
                return x[int(arg.name)] if arg.name else x
            if arg.kind == "grad_out":
                return grad_out
            if arg.kind == "param":
                return self.params[arg.name]
            if arg.kind == "grad":
                return self.grads[arg.name]
            if arg.kind == "state":
                return self.state[arg.name]
            if arg.kind == "random":
                return self.random
            if arg.kind == "offset":
                return 0
            if arg.kind == "buf":
                spec = self.buffers()[arg.name]
                return self.buffer(arg.name, (n, *spec.shape), spec.dtype)
            if arg.kind == "scratch":
                spec = self.scratch_arrays()[arg.name]
                return self.buffer("scratch:" + arg.name, tuple(spec.shape), spec.dtype)
            raise ValueError(f"unknown array reference {arg}")

        for call in calls:
            if isinstance(call, Sync):
                continue  # one piece: its share is the batch's
            kernel, args = call
            arrays = [resolve(arg) for arg in args]
            if KERNEL_TIMER is None:
                kernel(*arrays)
            else:
                KERNEL_TIMER(self, kernel, arrays)
        if isinstance(result, list):
            return [resolve(ref) for ref in result]
        return resolve(result)

    def flops(self, input_shape: Shape) -> int:
        """Floating-point operations of one forward pass for one example (a multiply-add is 2)."""
        return 0

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        """Lower the layer's inference form to ONNX nodes added through `onnx` (opset 17, see
        `OnnxBuilder`) reading the tensors named `inputs` (one
        per input, batch first); return the name of the output tensor. A layer that is the
        identity at inference returns `inputs[0]`. Optional: without it, export fails."""
        raise NotImplementedError(f"{type(self).__name__} has no ONNX lowering")

    # --- helpers for subclasses ------------------------------------------------------------

    def buffer(self, key: str, shape: Shape, dtype: Any = np.float32) -> np.ndarray:
        """A scratch or output array kept between calls; reallocated only when its shape changes."""
        array = self._buffers.get(key)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = np.empty(shape, dtype)
            self._buffers[key] = array
        return array

    def config_dict(self) -> dict[str, Any]:
        """The layer's config as JSON-safe data, without defaults left implicit."""
        data = self.config.model_dump(mode="json")
        data["name"] = self.name
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, output_shape={self._output_shape})"


def he_normal(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """He et al. (2015): N(0, 2 / fan_in), fan_in = product of all but the first axis."""
    fan_in = math.prod(shape[1:]) or 1
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def glorot_uniform(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Glorot & Bengio (2010): U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_in = (shape[1] if len(shape) > 1 else 1) * receptive
    fan_out = shape[0] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


INITIALIZERS = {"he_normal": he_normal, "glorot_uniform": glorot_uniform}


def pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An int or a pair of ints as (height, width)."""
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def padding_sides(
    height: int, width: int, kernel: tuple[int, int], stride: tuple[int, int], padding: Any
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) zeros around an image, for `padding` given as an int, a
    pair, "valid" (none) or "same": output size ceil(input / stride), as TensorFlow does,
    the odd one of the padding at the bottom and right (PyTorch's "same" at stride 1)."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        pads = []
        for size, k, s in ((height, kernel[0], stride[0]), (width, kernel[1], stride[1])):
            out = -(-size // s)
            pads.append(max((out - 1) * s + k - size, 0))
        return (pads[0] // 2, pads[1] // 2, pads[0] - pads[0] // 2, pads[1] - pads[1] // 2)
    ph, pw = pair(padding)
    return (ph, pw, ph, pw)


def expect_image(layer: Layer, input_shape: Shape) -> tuple[int, int, int]:
    """Check that a layer gets a (C, H, W) input; name the fix when it does not."""
    if len(input_shape) != 3:
        raise ShapeError(f"expected an image input (channels, height, width), received shape {input_shape}")
    return input_shape
