"""One image's inference on several threads at once: the parts of `predict_parts`.

A batch of many images is cut into pieces, one per thread, each image computed by one thread
(cnntool.model.network). A single image cannot be cut that way, and its latency is what a
request waits for. So the plan of a large enough network (cnntool.compile.codegen:
PARTS_MIN_FLOPS, PART_KERNELS) also has `predict_parts(part, parts, flags, x, probs, ...)`:
every thread runs the same function with its own `part`, and each layer's work is shared
among them:

- a convolution or dense layer computes its share of the output (`share`): a convolution
  its output rows (the im2col columns and the product of those rows only; Winograd its tile
  rows), a dense layer its units; the kernels are the `*_part` versions below;
- an elementwise kernel (add, ReLU) runs on its share of the elements (`flat_share`);
- a kernel writing only the part's own scratch (a batch norm folded into a copy of the
  weights) runs in every part, each thread for itself;
- any other kernel runs in part 0 alone (pooling to a vector, the softmax: microseconds).

After each layer the threads wait for each other at a `barrier`: the next layer reads what
all of them wrote. Every thread has its own scratch; the activations are shared.

The barrier spins on an atomic counter: waking a sleeping thread costs tens of microseconds,
about as long as a small layer. A thread that waits long yields its core (sched_yield), so an
oversubscribed machine still makes progress, and after MAX_YIELDS yields the barrier gives up
and returns False: a part that never arrives (it failed) does not hang the others.
"""

import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# Spins (a pause instruction each) before a waiting thread starts yielding its core, and
# yields before it gives up.
SPINS = 4000
MAX_YIELDS = 2_000_000

_sched_yield = types.ExternalFunction("sched_yield", types.int32())
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _element_pointer(context, builder, array_type, array, index):
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [index])


@intrinsic
def atomic_add(typingctx, flags, index, value):
    """flags[index] += value atomically (sequentially consistent); returns the new value."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.add(builder.atomic_rmw("add", pointer, args[2], "seq_cst"), args[2])

    return types.int64(flags, types.int64, types.int64), codegen


@intrinsic
def atomic_load(typingctx, flags, index):
    """flags[index], read atomically (acquire): never hoisted out of a waiting loop."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(pointer, "acquire", 8)

    return types.int64(flags, types.int64), codegen


@intrinsic
def atomic_store(typingctx, flags, index, value):
    """flags[index] = value atomically (release)."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], pointer, "release", 8)
        return context.get_dummy_value()

    return types.void(flags, types.int64, types.int64), codegen


@intrinsic
def cpu_relax(typingctx):
    """x86's pause instruction, which tells the core it is in a spin loop; nothing elsewhere."""

    def codegen(context, builder, signature, args):
        if _X86:
            pause = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause"
            )
            builder.call(pause, [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(cache=True, nogil=True)
def barrier(flags, parties):
    """Wait until `parties` threads have called it (flags: int64 [arrived, generation], zero at
    first, shared by them). True once all have; False if this thread gave up waiting."""
    generation = atomic_load(flags, 1)
    if atomic_add(flags, 0, 1) == parties:  # the last to arrive resets and releases the rest
        atomic_store(flags, 0, 0)
        atomic_add(flags, 1, 1)
        return True
    waited = 0
    while atomic_load(flags, 1) == generation:
        waited += 1
        if waited < SPINS:
            cpu_relax()
        elif waited < SPINS + MAX_YIELDS:
            _sched_yield()
        else:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def flat_share(array, part, parts):
    """Part `part`'s share of `array`'s elements, as a flat view (for elementwise kernels)."""
    first = array.size * part // parts
    return array.reshape(array.size)[first : array.size * (part + 1) // parts]


@njit(cache=True, nogil=True, inline="always")
def share(count, part, parts):
    """The range [first, last) of `count` items (rows, units) that part `part` of `parts` takes."""
    return count * part // parts, count * (part + 1) // parts
