"""One image's inference on several threads at once: the parts of `predict_parts`.

A batch of many images is cut into pieces, one per thread, each image computed by one thread
(cnntool.model.network). A single image cannot be cut that way, and its latency is what a
request waits for. So the plan of a large enough network (cnntool.compile.codegen:
PARTS_MIN_FLOPS, PART_KERNELS) also has `predict_parts(part, parts, flags, control, x, probs, ...)`:
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
oversubscribed machine still makes progress, and after MAX_WAIT seconds the barrier gives up
and returns False: a part that never arrives (it failed) does not hang the others. (POSIX
only, as the rest of cnntool: sched_yield and clock_gettime come from the C library.)

Between images, the parts past the first wait the same way inside predict_parts
(`wait_for_image`, given a `control` array: cnntool.model.parts), so that a new image does
not have to wake a sleeping thread; after IDLE seconds without one they return to sleep.
"""

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# Spins (a pause instruction each) before a waiting thread starts yielding its core; seconds
# before it gives up (the clock is read every CLOCK_EVERY yields).
SPINS = 4000
MAX_WAIT = 5.0
CLOCK_EVERY = 256

_sched_yield = types.ExternalFunction("sched_yield", types.int32())
_clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.voidptr))
CLOCK_MONOTONIC = np.int32(6 if platform.system() == "Darwin" else 1)
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
    for _ in range(SPINS):
        if atomic_load(flags, 1) != generation:
            return True
        cpu_relax()
    return wait_yielding(flags, generation)


@njit(cache=True, nogil=True)
def wait_yielding(flags, generation):
    """The rest of a long wait at the barrier: yielding the core, for up to MAX_WAIT s."""
    clock = np.zeros(2, np.int64)  # a timespec: seconds, nanoseconds
    _clock_gettime(CLOCK_MONOTONIC, clock.ctypes)
    deadline = clock[0] + 1e-9 * clock[1] + MAX_WAIT
    waited = 0
    while atomic_load(flags, 1) == generation:
        _sched_yield()
        waited += 1
        if waited % CLOCK_EVERY == 0:
            _clock_gettime(CLOCK_MONOTONIC, clock.ctypes)
            if clock[0] + 1e-9 * clock[1] > deadline:
                return False
    return True


# A serving part (see wait_for_image) spins and yields for this many seconds without an
# image before it returns to sleep in Python (model/parts.py): waking a sleeping thread of
# this virtual machine costs 30-70 µs, a tenth of the ResNet's whole latency.
IDLE = 0.005


@njit(cache=True)
def post_image(control):
    """Tell the serving parts that an image is ready (control[0]: images posted). Called with
    the GIL held, as the parts' sleeping and waking is (model/parts.py)."""
    atomic_add(control, 0, 1)


@njit(cache=True, nogil=True)
def wait_for_image(control, part):
    """A serving part between images: wait until control[0] (images posted) passes
    control[2 + part] (the images this part has taken, which it counts up here), then True.
    False after IDLE seconds without an image, or once control[1] (stop) is set."""
    taken = control[2 + part]
    for _ in range(SPINS):
        if atomic_load(control, 0) != taken:
            control[2 + part] = taken + 1
            return atomic_load(control, 1) == 0
        cpu_relax()
    clock = np.zeros(2, np.int64)
    _clock_gettime(CLOCK_MONOTONIC, clock.ctypes)
    deadline = clock[0] + 1e-9 * clock[1] + IDLE
    waited = 0
    while atomic_load(control, 0) == taken:
        if atomic_load(control, 1) != 0:
            return False
        _sched_yield()
        waited += 1
        if waited % CLOCK_EVERY == 0:
            _clock_gettime(CLOCK_MONOTONIC, clock.ctypes)
            if clock[0] + 1e-9 * clock[1] > deadline:
                return False
    control[2 + part] = taken + 1
    return atomic_load(control, 1) == 0


@njit(cache=True, nogil=True, inline="always")
def flat_share(array, part, parts):
    """Part `part`'s share of `array`'s elements, as a flat view (for elementwise kernels)."""
    first = array.size * part // parts
    return array.reshape(array.size)[first : array.size * (part + 1) // parts]


@njit(cache=True, nogil=True, inline="always")
def share(count, part, parts):
    """The range [first, last) of `count` items (rows, units) that part `part` of `parts` takes."""
    return count * part // parts, count * (part + 1) // parts
