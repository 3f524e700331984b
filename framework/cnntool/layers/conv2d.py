"""2-D convolution (cross-correlation, as in PyTorch and Keras), with stride and padding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, cast

import numpy as np
from pydantic import Field

from cnntool.kernels.conv import fold_batchnorm
from cnntool.kernels.epilogue import (
    conv2d_epilogue_pool_wide,
    conv2d_forward_wide_epilogue,
    epilogue_backward,
)
from cnntool.kernels.winograd import NEVER, conv2d_backward, conv2d_forward, conv2d_relu_pool, plane_shape
from cnntool.layers.base import (
    GRAD_OUT,
    INITIALIZERS,
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
)
from cnntool.layers.epilogue import Epilogue

if TYPE_CHECKING:
    from cnntool.layers.base import OnnxBuilder, Pooling

PositiveSize = Annotated[int, Field(ge=1, le=4096)]
SizeOrPair = PositiveSize | tuple[PositiveSize, PositiveSize]


class Conv2DConfig(LayerConfig):
    type: Literal["conv2d"] = "conv2d"
    filters: Annotated[int, Field(ge=1, le=65536, description="Number of output channels.")]
    kernel_size: SizeOrPair = Field(description="Window size: an int or [height, width].")
    stride: SizeOrPair = 1
    padding: (
        Annotated[int, Field(ge=0, le=4096)]
        | tuple[Annotated[int, Field(ge=0, le=4096)], Annotated[int, Field(ge=0, le=4096)]]
        | Literal["same", "valid"]
    ) = Field(
        default=0,
        description='Zeros added on each side: an int, [height, width], "valid" (0) or "same" '
        "(output size ceil(input / stride), extra padding at the bottom and right as in "
        "TensorFlow; equal to PyTorch's 'same' at stride 1).",
    )
    use_bias: bool = True
    init: Literal["he_normal", "glorot_uniform"] = "he_normal"


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    return (size + pad_before + pad_after - kernel) // stride + 1


class Conv2D(Layer):
    """y[n, o, p, q] = b[o] + sum_{c,i,j} W[o, c, i, j] x[n, c, p*sh + i - pt, q*sw + j - pl],
    x zero outside the image, W of shape (filters, in_channels, kh, kw) as in PyTorch.

    Backward, with g = dL/dy: dL/db[o] = sum_{n,p,q} g[n, o, p, q];
    dL/dW[o, c, i, j] = sum_{n,p,q} g[n, o, p, q] x[n, c, p*sh + i - pt, q*sw + j - pl];
    dL/dx = the transposed convolution: each input value gets W times every g it reached.

    Kernel paths (cnntool.kernels.conv and .winograd), image by image as BLAS products:
    - "wide" im2col, any stride: the padded image (at stride s, its s x s phases, each a
      subsampled copy) has one contiguous run per kernel tap; the runs are the rows of the
      im2col matrix and out = W @ cols computes rows of the phase width, cropped after
      (conv2d_forward_wide, conv2d_backward_wide). Columns of at most KEEP_COLUMNS_BYTES per
      image are kept from forward for backward; larger ones are rebuilt there.
    - 3x3 at stride 1 whose columns are not kept, with in x out channels at least
      WINOGRAD_MIN_PAIRS (WINOGRAD_INFERENCE_MIN_PAIRS for inference): forward by Winograd
      F(2x2, 3x3) (2.25x fewer multiplications; a single image only with
      WINOGRAD_MIN_TILES output tiles); its backward too, from two images a call on and
      when padded by at most 2 on each side (conv2d_backward_winograd): dW from
      dU[k] = dM[k] @ V[k]^T in the transformed space, dx as the convolution of dL/dy
      with the kernels flipped and their channels swapped, padded by 2 - pad (the
      transposed convolution at stride 1). Other layers' backward goes by the wide path.
    One kernel, conv2d_forward, runs the forward pass either way, the path a number it is
    given (min_images) and the kept or rebuilt columns a flag (`columns`, an Either): the
    compiled plan's code is the same whatever the shapes decide, so a network of new
    shapes reuses it.
    In a compiled plan (cnntool.compile.plan), a ReLU reading only a convolution is applied
    by its kernels as they write the output, and masks the gradient in backward (`fuses`);
    for inference, a ReLU and a 2x2 stride-2 max-pool after it are one pass over the product
    (conv2d_relu_pool, `fuses_pool`; by Winograd the output transform pools each 2x2 tile),
    and a batch norm before a ReLU is folded into the weights (fold_batchnorm). One image of
    a large network is shared among the threads by output rows (Winograd: tile rows, or
    output channels for a small image), the `_part` kernels (cnntool.kernels.parts).
    """

    Config = Conv2DConfig
    config: Conv2DConfig

    @classmethod
    def examples(cls) -> list[tuple[dict, Shape]]:
        """Configs `cnntool plugin check` runs the conformance checks on."""
        return [
            ({"type": "conv2d", "filters": 3, "kernel_size": 3}, (2, 7, 6)),
            (
                {"type": "conv2d", "filters": 2, "kernel_size": [2, 3], "stride": 2, "padding": "same"},
                (3, 7, 8),
            ),
            ({"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1, "use_bias": False}, (1, 5, 5)),
        ]

    def padding(self, input_shape: Shape) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) zeros added around each image."""
        _, height, width = input_shape
        return padding_sides(
            height, width, pair(self.config.kernel_size), pair(self.config.stride), self.config.padding
        )

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _, height, width = expect_image(self, input_shape)
        kh, kw = pair(self.config.kernel_size)
        sh, sw = pair(self.config.stride)
        top, left, bottom, right = self.padding(input_shape)
        if kh > height + top + bottom or kw > width + left + right:
            raise ShapeError(
                f"kernel_size {kh}x{kw} is larger than its input {height}x{width}"
                + (f" padded to {height + top + bottom}x{width + left + right}" if top or left else "")
                + f" (input shape {tuple(input_shape)}); use a smaller kernel or padding"
            )
        oh = conv_output_size(height, kh, sh, top, bottom)
        ow = conv_output_size(width, kw, sw, left, right)
        return (self.config.filters, oh, ow)

    def param_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        kh, kw = pair(self.config.kernel_size)
        shapes: dict[str, Shape] = {"weight": (self.config.filters, input_shape[0], kh, kw)}
        if self.config.use_bias:
            shapes["bias"] = (self.config.filters,)
        return shapes

    def init_param(self, name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        if name == "weight":
            return INITIALIZERS[self.config.init](shape, rng)
        return np.zeros(shape, np.float32)

    # The wide im2col (contiguous copies, see kernels/conv.py): an image's columns are kept
    # from forward to backward when they are small (they are then still in cache); a large
    # layer's are rebuilt in backward instead of holding them for the whole batch.
    KEEP_COLUMNS_BYTES = 64 * 1024
    # A 3x3 stride-1 layer with at least this many (input channel, filter) pairs computes the
    # forward pass of a batch by Winograd's F(2x2, 3x3) (kernels/winograd.py): 2.25x fewer
    # multiplications, which pays once the matrix products dominate the transforms.
    WINOGRAD_MIN_PAIRS = 512
    # In inference passes, from this many pairs on (16 -> 16 channels at 28x28, one thread:
    # batches of 32 4.9 ms against 5.6 ms for the wide path, one image 159 µs against 214 µs).
    # Training keeps the wide path below WINOGRAD_MIN_PAIRS: Winograd's other rounding made
    # the ResNet's training losses drift further from PyTorch's (tools/bench.py, 3 epochs:
    # 4.7e-4 against 1.6e-4) for a gain within the noise of a whole step.
    WINOGRAD_INFERENCE_MIN_PAIRS = 256
    # A single image goes by Winograd only with at least this many 2x2 output tiles. With the
    # transformed weights kept between calls (transform_weights), 7x7 (16 tiles, the last row
    # and column half empty) gains: 96 -> 96 channels, one image, one thread, 99 µs against
    # 133 µs for the wide product on AVX2 (67 against 110 µs on AVX-512); 5x5 (9 tiles) is
    # even on AVX2 (36 against 37 µs, 64 channels) and 4x4 loses there (132 against 110 µs).
    WINOGRAD_MIN_TILES = 16
    # A layer whose training forward goes by Winograd computes its backward by Winograd from
    # this many images a call on (winograd_backward). Steps of `mnist_cnn` in one process,
    # the same plan alternating the two ways, min (median) of many (2-core AVX2): 32 images
    # on one thread 69.8 (110.7) ms against 97.8 (133.0) wide, the ResNet's 150.4 (182.9)
    # against 178.7 (226.2); one image on two threads, where the wide product is one BLAS
    # call shared by both, 2.9-3.7 (3.9-4.4) ms against 2.8-3.2 (3.8-4.3).
    WINOGRAD_BACKWARD_MIN_IMAGES = 2

    def fuses(self, activation: Layer) -> bool:
        """A ReLU after a convolution is applied by the wide kernels as they write the
        output, and masks the gradient in backward: one pass less each way. Another
        activation declaring an Epilogue is applied image by image (kernels/epilogue.py)."""
        if isinstance(activation.epilogue, Epilogue):
            return not self.winograd
        return activation.epilogue == "relu"

    def fuses_pool(self, activation: Layer, pool: Layer) -> bool:
        """For inference, a ReLU and a 2x2 max-pool of stride 2 after a convolution are one
        pass over the product (conv2d_relu_pool_wide, or conv2d_relu_pool for a layer
        going by Winograd). So are, for any stride, a
        batch norm and a ReLU after it (`activation` the batch norm, `pool` the ReLU): the
        batch norm's running statistics are folded into the weights (fold_batchnorm), and
        the convolution applies the ReLU as it writes; `folded_norm` remembers the batch
        norm for activation_pool_calls."""
        self.folded_norm = None
        if activation.config.type == "batchnorm2d" and pool.epilogue == "relu":
            self.folded_norm = activation
            return True
        epilogue = activation.epilogue
        increasing = epilogue.increasing if isinstance(epilogue, Epilogue) else epilogue == "relu"
        return (
            self.fuses(activation)
            and increasing
            and pool.reduction == "max"
            and cast("Pooling", pool).window == (2, 2, 2, 2)
        )

    def folds(self, following: Layer) -> bool:
        """For inference, a batch norm after it (without a ReLU: before an `add`, say) is
        folded into a copy of the weights and bias (fold_batchnorm)."""
        return following.config.type == "batchnorm2d"

    @property
    def stride_one(self) -> bool:
        return pair(self.config.stride) == (1, 1)

    @property
    def winograd(self) -> bool:
        """Whether every forward pass goes by Winograd."""
        pairs = self.input_shape[0] * self.config.filters
        return self.winograd_inference and pairs >= self.WINOGRAD_MIN_PAIRS

    @property
    def winograd_inference(self) -> bool:
        """Whether the inference passes go by Winograd."""
        return (
            self.stride_one
            and pair(self.config.kernel_size) == (3, 3)
            and not self.keep_columns
            and self.input_shape[0] * self.config.filters >= self.WINOGRAD_INFERENCE_MIN_PAIRS
        )

    @property
    def winograd_min_images(self) -> int:
        """Images per call from which a layer going by Winograd uses it (conv2d_forward)."""
        return 1 if self.tiles[0] * self.tiles[1] >= self.WINOGRAD_MIN_TILES else 2

    def min_images(self, training: bool) -> int:
        """conv2d_forward's min_images for a training or an inference pass: from how many
        images a call goes by Winograd, NEVER for the wide product always."""
        winograd = self.winograd if training else self.winograd_inference
        return self.winograd_min_images if winograd else NEVER

    @property
    def winograd_backward(self) -> bool:
        """Whether the backward pass goes by Winograd (in calls of at least
        WINOGRAD_BACKWARD_MIN_IMAGES images): a layer whose training forward does, padded by
        at most 2 on each side (the input gradient's convolution is padded by 2 - pad)."""
        return self.winograd and max(self.padding(self.input_shape)) <= 2

    @property
    def input_tiles(self) -> tuple[int, int]:
        """The 2x2 tiles down and across of the input gradient's Winograd."""
        _, height, width = self.input_shape
        return (height + 1) // 2, (width + 1) // 2

    @property
    def tiles(self) -> tuple[int, int]:
        """Winograd's 2x2 output tiles down and across."""
        _, oh, ow = self.output_shape
        return (oh + 1) // 2, (ow + 1) // 2

    @property
    def rows(self) -> int:
        """Rows of the im2col matrix: input channels x kernel height x kernel width."""
        kh, kw = pair(self.config.kernel_size)
        return self.input_shape[0] * kh * kw

    @property
    def padded_shape(self) -> Shape:
        """The padded image cut into its stride phases (SH*SW*C, HQ, WQ), see kernels/conv.py;
        at stride 1 the padded image itself."""
        channels = self.input_shape[0]
        _, oh, ow = self.output_shape
        kh, kw = pair(self.config.kernel_size)
        sh, sw = pair(self.config.stride)
        return (sh * sw * channels, oh + (kh - 1) // sh, ow + (kw - 1) // sw)

    @property
    def span(self) -> int:
        """Columns of the wide im2col matrix: output rows of the phase width, less the spill."""
        _, oh, ow = self.output_shape
        return (oh - 1) * self.padded_shape[2] + ow

    @property
    def keep_columns(self) -> bool:
        """Whether each image's columns are kept from forward for backward: small layers',
        and a strided layer's, as the classic im2col this path replaced did (rebuilding
        them would cut the image into its phases again; they are a quarter the size of a
        stride-1 layer's)."""
        return not self.stride_one or self.rows * self.span * 4 <= self.KEEP_COLUMNS_BYTES

    @property
    def columns(self) -> Either:
        """The wide kernels' columns: a buffer kept for backward, or shared scratch (both are
        declared, the other empty, and the plan picks one by a flag: its code is the same
        for any shapes)."""
        return Either(self.keep_columns, buf("cols"), scratch("cols"))

    def buffers(self) -> dict[str, Array]:
        kept = (self.rows, self.span) if self.keep_columns else (0, 0)
        return {"out": Array(self.output_shape), "grad_x": Array(self.input_shape), "cols": Array(kept)}

    def scratch_arrays(self) -> dict[str, Array]:
        filters, oh, _ = self.output_shape
        arrays = {
            "padded": Array(self.padded_shape),
            "padded_grad": Array(self.padded_shape),
            "full": Array((filters, oh * self.padded_shape[2])),
        }
        arrays["cols"] = Array((1, 0, 0) if self.keep_columns else (1, self.rows, self.span))
        # Winograd's, empty for a layer that never goes by it (the same code either way)
        used = self.winograd_inference
        wc, wf = (self.input_shape[0], filters) if used else (0, 0)  # Winograd's channels, filters
        th, tw = self.tiles if used else (-1, -1)
        # The backward pass's (conv2d_backward_winograd), empty when it goes wide; its input
        # gradient's V and M are the forward's v and m, made large enough for both
        dc, df = (self.input_shape[0], filters) if self.winograd_backward else (0, 0)
        dh, dw = self.input_tiles if self.winograd_backward else (-1, -1)
        arrays["wino_seen"] = Array((wf, wc, 3, 3))
        arrays["wino_u"] = Array(plane_shape(wf, wc))
        arrays["wino_padded"] = Array((wc, 2 * th + 2, 2 * tw + 2))
        arrays["wino_v"] = Array(plane_shape(1, max(wc * th * tw, df * dh * dw)))
        arrays["wino_m"] = Array(plane_shape(1, max(wf * th * tw, dc * dh * dw)))
        arrays["dw_u"] = Array(plane_shape(df, dc))
        arrays["dx_weights"] = Array((2, dc, df, 3, 3))  # the flipped kernels, and their `seen`
        arrays["dx_u"] = Array(plane_shape(dc, df))
        arrays["dx_padded"] = Array((df, 2 * dh + 2, 2 * dw + 2))
        arrays["dx_masked"] = Array(self.output_shape if self.winograd_backward else (0, 0, 0))
        arrays["weight_t"] = Array((self.rows, filters))
        if not self.config.use_bias:
            arrays["no_bias"] = Array((filters,))
        # For inference with a batch norm folded in (folded_calls).
        arrays["folded_weight"] = Array(self.param_shapes(self.input_shape)["weight"])
        arrays["folded_bias"] = Array((filters,))
        return arrays

    def common(self) -> dict:
        """Arguments every kernel of this layer takes."""
        top, left, _, _ = self.padding(self.input_shape)
        sh, sw = pair(self.config.stride)
        bias = param("bias") if self.config.use_bias else scratch("no_bias")
        return {"weight": param("weight"), "use_bias": self.config.use_bias, "sh": sh, "sw": sw,
                "pad_top": top, "pad_left": left, "bias": bias}  # fmt: skip

    def forward_calls(
        self, training: bool, relu_into: Ref | None = None, epilogue: Epilogue | None = None
    ) -> list[Call]:
        """The forward kernel; with `relu_into` (a following ReLU layer's output buffer, when
        the plan fuses the two) it applies the ReLU and writes there, or the `epilogue` of
        another activation (keeping its own output, the pre-activation, for backward)."""
        if epilogue is not None:
            columns = self.columns
            return [
                Call(conv2d_forward_wide_epilogue, x=X, **self.common(), keep=self.keep_columns,
                     padded=scratch("padded"), columns=columns, full=scratch("full"), **epilogue.arguments(),
                     pre=buf("out"), out=relu_into)
            ]  # fmt: skip
        out = relu_into if relu_into is not None else buf("out")
        return [self.forward_call(self.common(), training, relu_into is not None, out)]

    def forward_call(self, common: dict, training: bool, relu: bool, out: Ref) -> Call:
        """The forward kernel with the arguments `common` (see common()): Winograd or the
        wide product, chosen by min_images (so the plan's code is the same for any shape)."""
        return Call(conv2d_forward, x=X, **common, keep=self.keep_columns, relu=relu,
                    min_images=self.min_images(training), **self.kernel_scratch(), out=out)  # fmt: skip

    def kernel_scratch(self) -> dict:
        """The arrays of conv2d_forward and conv2d_relu_pool besides the layer's input,
        weights and output: the wide product's, then Winograd's."""
        return {"padded": scratch("padded"), "columns": self.columns, "full": scratch("full"),
                "seen": scratch("wino_seen"), "u": scratch("wino_u"), "tiles_padded": scratch("wino_padded"),
                "v": scratch("wino_v"), "m": scratch("wino_m")}  # fmt: skip

    def activation_pool_calls(self, pooled: Ref, epilogue: Epilogue | None = None) -> list[Call]:
        """Inference of this layer, a ReLU (or an increasing `epilogue`) and a 2x2 max-pool
        after it, into `pooled` (the pool's output buffer): one pass over the product
        instead of three. Or, after fuses_pool(batch norm, ReLU), this layer with the batch
        norm folded in and the ReLU applied, into the ReLU's output (folded_calls)."""
        norm = getattr(self, "folded_norm", None)
        if norm is not None and epilogue is None:
            return self.folded_calls(norm, pooled, relu=True)
        columns = self.columns
        if epilogue is not None:
            return [
                Call(conv2d_epilogue_pool_wide, x=X, **self.common(), padded=scratch("padded"),
                     columns=columns, full=scratch("full"), **epilogue.arguments(), out=pooled)
            ]  # fmt: skip
        return [
            Call(conv2d_relu_pool, x=X, **self.common(), min_images=self.min_images(False),
                 **self.kernel_scratch(), out=pooled)
        ]  # fmt: skip

    def folded_calls(self, following: Layer, out: Ref, relu: bool = False) -> list[Call]:
        """Inference of this layer and the batch norm after it (`following`, in inference
        form), then a ReLU with `relu` (fuses_pool found one), into `out`: the batch norm's
        scale and shift folded into a copy of the weights and bias (fold_batchnorm), then
        the forward kernel (applying the ReLU)."""
        eps = float(following.config.model_dump()["eps"])  # a batch norm: folds or fuses_pool checked
        fold = Call(fold_batchnorm, weight=param("weight"), bias=self.common()["bias"],
                    use_bias=self.config.use_bias, norm_weight=Ref("next_param", "weight", 1),
                    norm_bias=Ref("next_param", "bias", 1), running_mean=Ref("next_state", "running_mean", 1),
                    running_var=Ref("next_state", "running_var", 1), eps=eps,
                    folded_weight=scratch("folded_weight"), folded_bias=scratch("folded_bias"))  # fmt: skip
        common = {**self.common(), "weight": scratch("folded_weight"), "bias": scratch("folded_bias"),
                  "use_bias": True}  # fmt: skip
        return [fold, self.forward_call(common, False, relu, out)]

    def backward_calls(
        self, need_grad_x: bool, relu_output: Ref | None = None, epilogue: Epilogue | None = None
    ) -> list[Call]:
        """The backward kernel; with `relu_output` (the fused ReLU's output buffer) grad_out
        is the gradient after the ReLU, masked here. With an `epilogue`, grad_out is first
        multiplied by its derivative, into the activation's own grad_x buffer."""
        first, incoming = [], GRAD_OUT
        if epilogue is not None:
            incoming = Ref("next_buf", "grad_x", 1)
            first = [Call(epilogue_backward, grad_out=GRAD_OUT, pre=buf("out"), **epilogue.arguments(),
                          grad_pre=incoming)]  # fmt: skip
        common = self.common()
        del common["bias"]
        grad_bias = grad("bias") if self.config.use_bias else scratch("no_bias")
        columns = self.columns
        activated = relu_output if relu_output is not None else buf("out")
        return [
            *first,
            Call(conv2d_backward, grad_out=incoming, x=X, **common, keep=self.keep_columns,
                 need_grad_x=need_grad_x, relu=relu_output is not None and epilogue is None,
                 activated=activated, padded=scratch("padded"), padded_grad=scratch("padded_grad"),
                 columns=columns, full=scratch("full"), weight_t=scratch("weight_t"),
                 grad_weight=grad("weight"), grad_bias=grad_bias, grad_x=buf("grad_x"),
                 min_images=self.WINOGRAD_BACKWARD_MIN_IMAGES if self.winograd_backward else NEVER,
                 tiles_padded=scratch("wino_padded"), v=scratch("wino_v"), m=scratch("wino_m"),
                 du=scratch("dw_u"), dx_weights=scratch("dx_weights"), dx_u=scratch("dx_u"),
                 dx_padded=scratch("dx_padded"), masked=scratch("dx_masked"))
        ]  # fmt: skip

    def onnx_nodes(self, onnx: OnnxBuilder, inputs: list[str]) -> str:
        """Conv with explicit pads, in ONNX's order (top, left, bottom, right)."""
        weights = [onnx.param("weight"), *([onnx.param("bias")] if self.config.use_bias else [])]
        return onnx.node(
            "Conv", [inputs[0], *weights], kernel_shape=pair(self.config.kernel_size),
            strides=pair(self.config.stride), pads=self.padding(self.input_shape),
        )  # fmt: skip

    def flops(self, input_shape: Shape) -> int:
        filters, oh, ow = self.compute_output_shape(input_shape)
        kh, kw = pair(self.config.kernel_size)
        macs = filters * oh * ow * input_shape[0] * kh * kw
        return 2 * macs + (filters * oh * ow if self.config.use_bias else 0)
