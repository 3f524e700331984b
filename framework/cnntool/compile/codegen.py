"""The code generator: the text of a plan module, one @njit function per task, from the kernel
calls each layer declares. Identifiers are unique by construction (`Generator.number`,
`Generator.array`); shapes are arguments, not literals; fusions are the ones layers declare
(`Layer.fuses`, epilogues); inference buffers are shared once their last reader has run
(`Generator.share`); batch norm's Sync points cut `train_step` into parts (`Generator.cut`);
a large network's predict of one image is shared among threads (`predict_parts`, see
PART_KERNELS and cnntool.kernels.parts).
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import textwrap
from typing import Any, ClassVar

import numpy as np

from cnntool.compile.cache import kernel_sources_digest, load_module
from cnntool.compile.memory import POOLS, Layout, align
from cnntool.kernels.activation import relu_forward, softmax_forward
from cnntool.kernels.conv import (
    conv2d_forward_wide,
    conv2d_forward_wide_part,
    conv2d_relu_pool_wide,
    conv2d_relu_pool_wide_part,
    fold_batchnorm,
)
from cnntool.kernels.dense import dense_forward, dense_forward_part
from cnntool.kernels.loss import argmax_rows, softmax_cross_entropy
from cnntool.kernels.merge import add_forward, add_into
from cnntool.kernels.parts import barrier, flat_share, wait_for_image
from cnntool.kernels.winograd import (
    conv2d_forward,
    conv2d_forward_part,
    conv2d_relu_pool,
    conv2d_relu_pool_part,
)
from cnntool.layers.base import Array, Either, Ref, Sync, kernel_parameters
from cnntool.layers.epilogue import Epilogue

# An activation that follows a layer able to apply it (Layer.fuses) runs inside that layer's
# kernels: the layer writes straight into the activation's output buffer and masks the
# gradient itself, saving a pass over the activations each way.
NEXT_OUT = Ref("next_buf", "out", 1)


# Marks a Sync point in generated code: a comment, so the uncut functions run past it.
SYNC_MARK = "# sync "


INFERENCE_TASKS = ("predict", "evaluate")  # their buffers all share memory (Generator.share)

# How each kernel of an inference pass runs in predict_parts, one image shared among threads
# (cnntool.kernels.parts): its `_part` version (the same arguments, then part and parts);
# elementwise on the part's share of every array; in every part (it writes the part's own
# scratch only). Any other kernel runs in part 0 while the others wait.
PART_KERNELS = {
    conv2d_forward_wide: conv2d_forward_wide_part,
    conv2d_forward: conv2d_forward_part,
    conv2d_relu_pool_wide: conv2d_relu_pool_wide_part,
    conv2d_relu_pool: conv2d_relu_pool_part,
    dense_forward: dense_forward_part,
}
ELEMENTWISE = (add_forward, add_into, relu_forward)
EVERY_PART = (fold_batchnorm,)
# A plan uses predict_parts (Plan.uses_parts) when the layers whose kernels it shares do
# at least this many FLOPs per image: the barriers cost 20-50 µs a call.
PARTS_MIN_FLOPS = 4_000_000


class Generator:
    """Writes the plan module's source for one network."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.layout = Layout()
        self.kernels: dict[Any, str] = {}
        self.signatures: dict[str, tuple[str, ...]] = {}
        # Every number the code needs (offsets, shapes, kernel arguments) is an element of
        # `dims` (integers and flags) or `reals` (floats), arguments of every function, in the
        # order the code asks for them: the text holds no number that depends on the
        # network's sizes, so networks of one structure share one compiled module.
        self.dims: list[int] = []
        self.reals: list[float] = []
        self.peaks: list[int] = []  # elements per example of each inference pass (see share)
        self.combines: dict[str, Any] = {}  # scratch array of each Sync -> its combine
        self.parts: list[int] = []  # the numbers of train_step's parts (see cut)
        self.shared_flops = 0  # FLOPs per image of the layers predict_parts shares (see source)
        self.parts_flops = 0  # the same, found by source() before it writes predict_parts
        self.syncs: list[tuple[str, Any]] = []  # (array, combine) after each part but the last
        # Every identifier in the generated code is a prefix and a number: names come from
        # users (layer names) and plugins (buffer names), and a mapping of them to
        # identifiers could make two of them one (`conv-a` and `conv_a`) or clash with
        # Python or the generator. The module's text holds no name at all, so networks that
        # differ only in names share one compiled module.
        self.arrays: dict[tuple[str, Any, str], str] = {}
        for kind, offsets in (("param", net.param_offsets), ("grad", net.param_offsets),
                              ("state", net.state_offsets)):  # fmt: skip
            for key in offsets:
                self.number(kind, None, key)
        for index, layer in enumerate(net.layers):
            for name, array in layer.buffers().items():
                self.layout.add(self.number("buf", index, name), array, per_example=True)
            for name, array in layer.scratch_arrays().items():
                self.layout.add(self.number("scratch", index, name), array, per_example=False)
        classes = net.output_shape[0]
        self.layout.add("grad_logits", Array((classes,)), per_example=True)

    PREFIXES: ClassVar[dict[str, str]] = {
        "param": "P", "grad": "G", "state": "S", "buf": "B", "scratch": "T", "sum": "A", "shared": "R"
    }  # fmt: skip

    def number(self, kind: str, index: int | None, name: str) -> str:
        """The identifier of one array: its kind's prefix and its position among that kind."""
        key = (kind, index, name)
        if key not in self.arrays:
            count = sum(1 for other in self.arrays if other[0] == kind)
            self.arrays[key] = f"{self.PREFIXES[kind]}{count}"
        return self.arrays[key]

    def array(self, kind: str, index: int | None, name: str) -> str:
        """The identifier of an array numbered in __init__ (a KeyError is a layer naming an
        array it does not declare)."""
        return self.arrays[(kind, index, name)]

    def kernel(self, function: Any) -> str:
        if function not in self.kernels:
            self.kernels[function] = f"k{len(self.kernels)}"
        return self.kernels[function]

    def ref(self, index: int, ref: Ref | Either, x: list[str], grad_out: str) -> str:
        """The variable standing for a reference made by layer `index`, whose inputs are
        the variables `x` and whose incoming gradient is `grad_out`."""
        if isinstance(ref, Either):  # chosen at run time, so the code is the same either way
            yes, no = self.ref(index, ref.yes, x, grad_out), self.ref(index, ref.no, x, grad_out)
            return f"({yes} if {self.dim(int(ref.flag))} else {no})"
        layer = self.net.layers[index]
        if ref.kind == "x":
            return x[int(ref.name) if ref.name else 0]
        if ref.kind == "grad_out":
            return grad_out
        if ref.kind in ("param", "grad", "state"):
            return self.array(ref.kind, None, f"{layer.name}.{ref.name}")
        if ref.kind in ("buf", "scratch"):
            return self.array(ref.kind, index, ref.name)
        if ref.kind in ("random", "offset"):  # arguments of every plan function (see RANDOM)
            return ref.kind
        if ref.kind == "next_buf":  # a following layer's buffer, for fused kernels
            return self.array("buf", index + ref.step, ref.name)
        if ref.kind in ("next_param", "next_state"):  # a following layer's, for fused kernels
            other = self.net.layers[index + ref.step]
            return self.array(ref.kind[len("next_") :], None, f"{other.name}.{ref.name}")
        raise ValueError(f"unknown reference {ref}")

    def epilogue_after(self, index: int) -> dict[str, Any]:
        """{"epilogue": ...} when the activation after layer `index` declares an Epilogue for
        the layer to apply (cnntool.layers.epilogue), else nothing: a ReLU needs none."""
        epilogue = self.net.layers[index + 1].epilogue
        return {"epilogue": epilogue} if isinstance(epilogue, Epilogue) else {}

    def emit_calls(
        self, index: int, calls: list, x: list[str], grad_out: str, indent: str, in_parts: bool = False
    ) -> list[str]:
        """The lines calling a layer's kernels; `in_parts`: as predict_parts runs them, with a
        barrier between two calls unless the second reads nothing another part of the first
        wrote (after a kernel of EVERY_PART, which writes its part's scratch only, and
        between elementwise kernels, whose shares are the same elements)."""
        lines: list[str] = []
        previous = None
        for call in calls:
            if isinstance(call, Sync):  # a marker line, where train_step is cut (see parts)
                array = self.ref(index, call.array, x, grad_out)
                self.combines[array] = call.combine
                lines.append(f"{indent}{SYNC_MARK}{array}")
                continue
            declared, declared_args = call
            function, args = bind_functions(declared, declared_args)
            texts = [
                self.ref(index, arg, x, grad_out) if isinstance(arg, (Ref, Either)) else self.number_arg(arg)
                for arg in args
            ]
            if not in_parts:
                lines.append(indent + self.call(function, texts))
                continue
            if previous is not None and not (
                previous in EVERY_PART or (previous in ELEMENTWISE and function in ELEMENTWISE)
            ):
                lines += self.barrier_lines(indent)
            lines.append(indent + self.part_call(function, texts))
            previous = function
        return lines

    def barrier_lines(self, indent: str) -> list[str]:
        """predict_parts waiting until every part has come here."""
        return [f"{indent}if not {self.kernel(barrier)}(flags, parts):", f"{indent * 2}return False"]

    def call(self, function: Any, texts: list[str]) -> str:
        return f"{self.kernel(function)}({', '.join(texts)})"

    def part_call(self, function: Any, texts: list[str]) -> str:
        """A kernel call as predict_parts makes it (see PART_KERNELS)."""
        if function in PART_KERNELS:
            return self.call(PART_KERNELS[function], [*texts, "part", "parts"])
        if function in ELEMENTWISE:
            return self.call(function, [f"{self.kernel(flat_share)}({text}, part, parts)" for text in texts])
        if function in EVERY_PART:
            return self.call(function, texts)
        return f"if part == 0: {self.call(function, texts)}"

    def dim(self, value: int) -> str:
        """An integer of the network (a size, an offset, a flag) as generated code."""
        self.dims.append(int(value))
        return f"dims[{len(self.dims) - 1}]"

    def shape(self, shape: tuple[int, ...]) -> str:
        return ", ".join(self.dim(d) for d in shape) + ("," if len(shape) == 1 else "")

    def number_arg(self, value: Any) -> str:
        """A number a layer passes to a kernel, as generated code: flags and integers from
        `dims` (a flag as 0 or 1, so kernels see int64 both ways), floats from `reals`."""
        if isinstance(value, (bool, np.bool_, int, np.integer)):
            return self.dim(int(value))
        if isinstance(value, (float, np.floating)):
            self.reals.append(float(value))
            return real_text(value, f"reals[{len(self.reals) - 1}]")
        raise TypeError(f"kernel arguments must be arrays or numbers, received {type(value).__name__}")

    def readers(self, index: int, stop: int) -> list[int]:
        """The layers among layers[:stop] that read layer `index`'s output."""
        return [k for k in range(index + 1, stop) if index in self.net.layers[k].sources]

    def forward_lines(
        self,
        stop: int,
        training: bool,
        indent: str,
        compute: bool = True,
        inference_only: bool = False,
        in_parts: bool = False,
    ) -> tuple[list[str], list[list[str]], list[str]]:
        """Lines running layers[:stop] forward (only naming the views when not `compute`);
        also returns the variables each layer reads and the one it writes. With
        `inference_only` (no backward pass follows) conv2d -> relu -> 2x2 max-pool runs as
        one kernel that keeps nothing for a backward pass, and a layer folds the one after
        it into its weights where it can (Layer.folds: conv2d -> batchnorm2d). With
        `in_parts`, as predict_parts: the kernels shared among the parts (part_call), and a
        barrier after each layer, since the next one reads what every part wrote."""
        lines: list[str] = []
        inputs: list[list[str]] = []
        outputs: list[str] = []
        pooled = -1  # the last layer computed by an earlier layer's kernel (a pool, a folded layer)
        for index, layer in enumerate(self.net.layers[:stop]):
            reads = [outputs[s] if s >= 0 else "x" for s in layer.sources]
            inputs.append(reads)
            kind = comment_text(layer.config.type)
            lines.append(f"{indent}# layer {index} ({kind})")
            if layer.view:
                lines.append(f"{indent}V{index} = {reads[0]}.reshape((n, {self.shape(layer.output_shape)}))")
                outputs.append(f"V{index}")
                continue
            outputs.append(self.ref(index, layer.forward_result, reads, ""))
            if index <= pooled:
                lines[-1] += " (computed by an earlier layer's kernel)"
                continue
            if inference_only and self.fused_pool(index, stop):
                pooled = index + 2
                calls = layer.activation_pool_calls(Ref("next_buf", "out", 2), **self.epilogue_after(index))
            elif inference_only and self.chained(index, stop) and layer.folds(self.net.layers[index + 1]):
                pooled = index + 1
                calls = layer.folded_calls(self.net.layers[index + 1], NEXT_OUT)
            elif self.fused(index - 1, stop):  # the layer before computed this ReLU already
                lines[-1] += " (applied by the layer before)"
                continue
            elif self.fused(index, stop):
                calls = layer.forward_calls(training, relu_into=NEXT_OUT, **self.epilogue_after(index))
            else:
                calls = layer.forward_calls(training)
            if compute and in_parts:
                lines += self.emit_calls(index, calls, reads, "", indent, in_parts=True)
                lines += self.barrier_lines(indent)
                if any(getattr(call, "kernel", None) in PART_KERNELS for call in calls):
                    self.shared_flops += int(layer.flops(layer.input_shape))
            elif compute:
                lines += self.emit_calls(index, calls, reads, "", indent)
        return lines, inputs, outputs

    def chained(self, index: int, stop: int) -> bool:
        """Whether layer index + 1 reads only layer `index`, which nothing else reads (both
        inside layers[:stop]): only then may one kernel compute the two."""
        layers = self.net.layers
        return (
            0 <= index < stop - 1
            and layers[index + 1].sources == (index,)
            and self.readers(index, stop) == [index + 1]
        )

    def fused(self, index: int, stop: int) -> bool:
        """Whether layer `index` computes the activation after it too (Layer.fuses)."""
        layers = self.net.layers
        return self.chained(index, stop) and layers[index].fuses(layers[index + 1])

    def fused_pool(self, index: int, stop: int) -> bool:
        """Whether layer `index` computes the activation and the pooling after it too, for
        inference (Layer.fuses_pool)."""
        layers = self.net.layers
        return (
            self.chained(index, stop)
            and self.chained(index + 1, stop)
            and layers[index].fuses_pool(layers[index + 1], layers[index + 2])
        )

    def gradient_sum(self, index: int, terms: list[str], indent: str, lines: list[str]) -> str:
        """The variable holding dL/d(output of layer `index`, or of the network input for
        -1): the one term, or the sum of the terms of every layer that reads it."""
        if len(terms) == 1:
            return terms[0]

        total = self.number("sum", index, "")
        if total not in self.layout.slots:
            shape = self.net.input_shape if index < 0 else self.net.layers[index].output_shape
            self.layout.add(total, Array(shape), per_example=True)
        lines.append(f"{indent}{self.kernel(add_forward)}({terms[0]}, {terms[1]}, {total})")
        lines += [f"{indent}{self.kernel(add_into)}({total}, {term})" for term in terms[2:]]
        return total

    def share(self, lines: list[str]) -> list[str]:
        """The lines of an inference pass, with its per-example buffers sharing memory: once
        the last line using a buffer has run, its memory goes to buffers used later. (Training
        keeps every buffer, since the backward pass reads them, and so does `forward`, which
        a backward may follow.) Each buffer of these lines gets a new identifier, viewing the
        offset found here. Records the pass's elements per example in `peaks`."""
        uses: dict[str, list[int]] = {}  # buffer -> first and last line using it
        views: dict[str, str] = {}  # V (a reshape) -> the buffer it views
        for number, line in enumerate(lines):
            if line.lstrip().startswith("#"):
                continue
            made = re.match(r"\s*(V\d+) = (\w+)\.reshape", line)
            if made:
                views[made[1]] = views.get(made[2], made[2])
            for name in re.findall(r"\b(?:B\d+|V\d+|grad_logits)\b", line):
                buffer = views.get(name, name)
                if buffer in self.layout.slots:
                    uses.setdefault(buffer, [number, number])[1] = number
        taken: list[tuple[int, int, int, str]] = []  # (offset, end, last line, pool)
        rename: dict[str, str] = {}
        ends: dict[str, int] = {}
        for buffer in sorted(uses, key=lambda name: uses[name][0]):
            first, last = uses[buffer]
            slot = self.layout.slots[buffer]
            size = align(math.prod(slot.shape))
            offset = 0  # the lowest gap between the buffers still in use that fits it
            for start, end, _, _ in sorted(t for t in taken if t[3] == slot.pool and t[2] >= first):
                if offset + size <= start:
                    break
                offset = max(offset, end)
            rename[buffer] = self.number("shared", len(self.peaks), buffer)
            end = self.layout.place(rename[buffer], buffer, offset)
            taken.append((offset, end, last, slot.pool))
            ends[slot.pool] = max(ends.get(slot.pool, 0), end)
        self.peaks.append(sum(ends.values()))
        if not rename:
            return lines
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, rename)) + r")\b")
        return [line if line.lstrip().startswith("#") else pattern.sub(lambda m: rename[m[1]], line)
                for line in lines]  # fmt: skip

    def cut(self, body: list[str], indent: str) -> list[tuple[str, str, list[str], list[str]]]:
        """train_step's body cut at its Sync points into parts 0, 1, ... of one function,
        train_parts(part, x, labels, grad_scale, ...): the pieces of a batch each run a part,
        then cnntool combines the arrays the Sync names, then the next part runs (Network runs
        them). Each part returns its loss and correct count, zero but for the part computing
        the loss. One function, not one per part: each compiled function links a copy of
        every kernel it calls, and the parts call mostly the same ones (a ResNet has 19)."""
        if not any(line.lstrip().startswith(SYNC_MARK) for line in body):
            return []
        made: dict[str, str] = {}  # the reshaped views (V, GV) a later part may use, by name
        for line in body:
            view = re.match(r"\s*(G?V\d+) = ", line)
            if view:
                made[view[1]] = line
        chunks: list[list[str]] = [[]]
        for line in body:
            if line.lstrip().startswith(SYNC_MARK):
                array = line.strip()[len(SYNC_MARK) :]
                self.syncs.append((array, self.combines[array]))
                chunks.append([])
            else:
                chunks[-1].append(line)
        code = []
        for number, chunk in enumerate(chunks):
            needed: list[str] = []
            text = "\n".join(chunk)
            pending = [name for name in re.findall(r"\bG?V\d+\b", text) if name in made]
            while pending:
                name = pending.pop()
                if name not in needed and not re.search(rf"^\s*{name} = ", text, re.M):
                    needed.append(name)
                    pending += [other for other in re.findall(r"\bG?V\d+\b", made[name]) if other != name]
            views = [line for name, line in made.items() if name in needed]
            result = "loss, correct" if re.search(r"^\s*loss, correct = ", text, re.M) else "0.0, 0"
            self.parts.append(number)
            code += [f"{indent}if part == {number}:", *(indent + line for line in [*views, *chunk]),
                     f"{indent * 2}return {result}"]  # fmt: skip
        doc = ["Part `part` of train_step (see Generator.cut)."]
        return [("train_parts", "part, x, labels, grad_scale", doc, [*code, f"{indent}return 0.0, 0"])]

    def memory(self) -> dict[str, int]:
        """Activation memory per example, in bytes (after `source`): of an inference pass
        (predict), its buffers shared, and of a training step, which keeps every buffer for
        its backward pass."""
        sizes = self.layout.sizes
        return {"inference": 4 * self.peaks[0], "training": 4 * (sizes["ws"] + sizes["iws"])}

    def backward_lines(
        self, stop: int, inputs: list[list[str]], grad: str, need_grad_x: bool, indent: str
    ) -> tuple[list[str], str | None]:
        """Lines running layers[:stop] backward from `grad`, the gradient of the last one's
        output; also returns the variable holding dL/dx (None unless need_grad_x)."""
        lines: list[str] = []
        terms: dict[int, list[str]] = {stop - 1: [grad]}  # gradients reaching each output
        for index in reversed(range(stop)):
            layer = self.net.layers[index]
            lines.append(f"{indent}# layer {index} ({comment_text(layer.config.type)}) backward")
            current = self.gradient_sum(index, terms.pop(index), indent, lines)
            if self.fused(index - 1, stop):  # its gradient goes through the layer before's kernels
                terms[index - 1] = [current]
                continue
            if layer.view:
                lines.append(f"{indent}GV{index} = {current}.reshape((n, {self.shape(layer.input_shape)}))")
                results = [f"GV{index}"]
            else:
                wanted = need_grad_x or any(source >= 0 for source in layer.sources)
                if self.fused(index, stop):
                    calls = layer.backward_calls(wanted, relu_output=NEXT_OUT, **self.epilogue_after(index))
                else:
                    calls = layer.backward_calls(wanted)
                lines += self.emit_calls(index, calls, inputs[index], current, indent)
                if not wanted:
                    continue
                results = [self.ref(index, ref, inputs[index], current) for ref in layer.backward_results()]
            for source, result in zip(layer.sources, results, strict=True):
                terms.setdefault(source, []).append(result)
        if not need_grad_x:
            return lines, None
        return lines, self.gradient_sum(-1, terms[-1], indent, lines)

    def views(self, indent: str) -> dict[str, str]:
        """The line making each array a view of its pool, by the array's identifier."""
        lines = {}
        for kind, pool, offsets in (
            ("param", "params", self.net.param_offsets),
            ("grad", "grads", self.net.param_offsets),
            ("state", "state", self.net.state_offsets),
        ):
            for key, (offset, shape) in offsets.items():
                name = self.array(kind, None, key)
                start, stop = self.dim(offset), self.dim(offset + math.prod(shape))
                lines[name] = f"{indent}{name} = {pool}[{start}:{stop}].reshape(({self.shape(shape)}))"
        for name, slot in self.layout.slots.items():
            start, stop = self.dim(slot.offset), self.dim(slot.offset + math.prod(slot.shape))
            shape = self.shape(slot.shape)
            if slot.per_example:
                lines[name] = f"{indent}{name} = {slot.pool}[n * {start}:n * {stop}].reshape((n, {shape}))"
            else:
                lines[name] = f"{indent}{name} = {slot.pool}[{start}:{stop}].reshape(({shape}))"
        return lines

    def function(
        self, name: str, leading: str, doc: list[str], code: list[str], views: dict[str, str]
    ) -> list[str]:
        """One @njit function: its docstring, the views its code uses, then the code. It takes
        `leading` and then only the pools those use (see POOLS): each view and each argument
        costs a little on every call, and for a batch of one that adds up."""
        ind = "    "
        text = "\n".join(code)
        used_views = [line for array, line in views.items() if re.search(rf"\b{array}\b", text)]
        used = "\n".join([*used_views, text])
        pools = tuple(pool for pool in POOLS if re.search(rf"\b{pool}\b", used))
        self.signatures[name] = pools
        return [
            "", "", "@njit(cache=True, nogil=True)", f"def {name}({', '.join([leading, *pools])}):",
            *([f'{ind}"""{doc[0]}"""'] if len(doc) == 1 else
              [f'{ind}"""{doc[0]}', *(f"{ind}{line}" for line in doc[1:-1]), f'{ind}{doc[-1]}"""']),
            f"{ind}n = x.shape[0]", *used_views, *code,
        ]  # fmt: skip

    def source(self) -> str:
        net = self.net
        head = net.head
        ind = "    "
        loss = self.kernel(softmax_cross_entropy)
        functions: list[tuple[str, str, list[str], list[str]]] = []

        lines, _, outs = self.forward_lines(head, False, ind, inference_only=True)
        lines = self.share([*lines, f"{ind}{self.kernel(softmax_forward)}({outs[-1]}, probs)"])
        functions.append(
            (
                "predict",
                "x, probs",
                ["Class probabilities of x (N, C, H, W) into probs (N, classes)."],
                lines,
            )
        )
        probe = Generator(net)  # which layers predict_parts would share, leaving self as it is
        probe.forward_lines(head, False, ind, inference_only=True, in_parts=True)
        self.parts_flops = probe.shared_flops
        # Written whenever a layer can be shared, and used (compiled) only from
        # PARTS_MIN_FLOPS on (Plan.uses_parts): the code does not depend on the shapes.
        if probe.shared_flops > 0:
            lines, _, outs = self.forward_lines(head, False, ind * 2, inference_only=True, in_parts=True)
            softmax = f"{ind * 2}if part == 0: {self.kernel(softmax_forward)}({outs[-1]}, probs)"
            wait = self.kernel(wait_for_image)
            functions.append((
                "predict_parts", "part, parts, flags, control, x, probs",
                ["Part `part` of `parts` of predict for one image (cnntool.kernels.parts); the",
                 "parts run at once, on one thread each, with flags zero. False if a part",
                 "gave up waiting for the others. With a `control` array, parts past the",
                 "first serve image after image (wait_for_image) until they idle; with an",
                 "empty one, every part computes one image."],
                [f"{ind}while True:",
                 f"{ind * 2}if part > 0 and control.size > 0 and not {wait}(control, part):",
                 f"{ind * 3}return True",
                 *self.share([*lines, softmax]),
                 f"{ind * 2}if part == 0 or control.size == 0:",
                 f"{ind * 3}return True"],
            ))  # fmt: skip
        train_lines, _, outs_train = self.forward_lines(len(net.layers), True, ind * 2)
        infer_lines, _, outs_infer = self.forward_lines(len(net.layers), False, ind)
        # (Not shared: backward may follow a forward in inference mode, and reads its buffers.)
        infer_lines = [*infer_lines, f"{ind}return {outs_infer[-1]}"]
        functions.append((
            "forward", "x, training",
            ["The last layer's output for x, in training or inference mode."],
            [f"{ind}if training:", *train_lines, f"{ind * 2}return {outs_train[-1]}",
             *infer_lines],
        ))  # fmt: skip
        reshapes, saved, _ = self.forward_lines(len(net.layers), True, ind, compute=False)
        backward, grad_x = self.backward_lines(len(net.layers), saved, "grad", True, ind)
        functions.append((
            "backward", "grad, x",
            ["dL/dx from dL/d(output) after a forward in training mode; fills every", "parameter gradient."],
            [*reshapes, *backward, f"{ind}return {grad_x}"],
        ))  # fmt: skip
        lines, saved, outs = self.forward_lines(head, True, ind)
        backward, _ = self.backward_lines(head, saved, "grad_logits", False, ind)
        loss_line = f"{ind}loss, correct = {loss}({outs[-1]}, labels, class_weights, grad_logits, grad_scale)"
        body = [*lines, loss_line, *backward]
        functions.append((
            "train_step", "x, labels, grad_scale",
            ["Forward, softmax cross-entropy from the logits, backward; returns the summed",
             "loss and the number of correct predictions. Gradients are scaled by grad_scale."],
            [*body, f"{ind}return loss, correct"],
        ))  # fmt: skip
        functions += self.cut(body, ind)
        lines, _, outs = self.forward_lines(head, False, ind, inference_only=True)
        lines = self.share([
            *lines, f"{ind}{self.kernel(argmax_rows)}({outs[-1]}, predictions)",
            f"{ind}return {loss}({outs[-1]}, labels, unit_weights, grad_logits, 0.0)",
        ])  # fmt: skip
        functions.append((
            "evaluate", "x, labels, predictions",
            ["Summed loss and correct count of x in inference mode; the predicted class",
             "of every row goes to predictions."],
            lines,
        ))  # fmt: skip
        views = self.views(ind)  # after the code: backward adds the arrays summing gradients
        body = [line for function in functions for line in self.function(*function, views)]

        imports = [
            f"from {fn.__module__} import {fn.__name__} as {alias}" for fn, alias in self.kernels.items()
        ]
        header = [
            f'"""Generated by cnntool.compile for a network of {len(net.layers)} layers; do not edit."""',
            "",
            # numba does not notice when a kernel this module calls changes: a new digest of
            # the kernels' sources gives the module a new name, hence a fresh compile.
            f"# kernels: {kernel_sources_digest(self.kernels)}",
            "",
            "import numpy as np",
            "from numba import njit",
            "",
            *sorted(imports),
        ]
        return "\n".join(header + body) + "\n"


def is_function(value: Any) -> bool:
    """Whether a kernel argument is a function (an epilogue's value or derivative)."""
    return callable(value) and not isinstance(value, (Ref, bool, int, float, np.number))


def bind_functions(kernel: Any, args: tuple) -> tuple[Any, tuple]:
    """A kernel called with functions among its arguments, as `specialize`d kernel taking
    the other arguments: numba inlines a function a kernel calls by name, but calls one
    passed in through a pointer, element by element, and cannot cache that."""
    bound = {name: arg for name, arg in zip(kernel_parameters(kernel), args, strict=True) if is_function(arg)}
    if not bound:
        return kernel, args
    return specialize(kernel, tuple(bound.items())), tuple(arg for arg in args if not is_function(arg))


_specialized: dict[tuple, Any] = {}  # (kernel, bound functions) -> the specialised kernel


def specialize(kernel: Any, bound: tuple[tuple[str, Any], ...]) -> Any:
    """The kernel's source with the parameters in `bound` removed and their names imported
    as the functions given, in a generated module of its own (written and cached like a
    plan); its name follows its text, which holds a digest of every source it depends on."""

    key = (kernel, bound)
    if key not in _specialized:
        tree = ast.parse(textwrap.dedent(inspect.getsource(kernel.py_func)))
        definition = tree.body[0]
        names = {name for name, _ in bound}
        definition.args.args = [arg for arg in definition.args.args if arg.arg not in names]  # type: ignore[attr-defined]
        digest = kernel_sources_digest({kernel: None, **{function: None for _, function in bound}})
        lines = [
            f'"""Generated by cnntool.compile: {kernel.__name__} calling given functions; do not edit."""',
            "",
            f"# sources: {digest}",
            "import numpy as np",
            "from numba import njit",
            f"from {kernel.__module__} import *  # the helpers the kernel calls",
            *(f"from {function.__module__} import {function.__name__} as {name}" for name, function in bound),
            "",
            "",
            ast.unparse(definition),
        ]
        module = load_module("\n".join(lines) + "\n", prefix="cnntool_kernel")
        _specialized[key] = getattr(module, kernel.__name__)
    return _specialized[key]


def real_text(value: Any, element: str) -> str:
    """A float argument as generated code, of the type the layer gave it: an np.float32 stays
    float32 (as it is when the layer runs layer by layer), any other float is float64."""
    return f"np.float32({element})" if isinstance(value, np.float32) else element


def comment_text(text: str) -> str:
    """Text for a comment of the generated code: plain words as they are, anything else
    (a newline, say, from a plugin's type name) escaped."""
    return text if re.fullmatch(r"[A-Za-z0-9_\-]+", text) else ascii(text)
