"""One image shared among threads that stay awake between images: the runner of a plan's
`predict_parts` (cnntool.kernels.parts) for batches of one.

Handing each image to a thread pool cost 70-100 µs a call on a 2-core virtual machine
(a ThreadPoolExecutor round trip doing nothing: the idle virtual CPU has to be woken), a
sixth of the ResNet's latency. So the parts past the first run on threads of their own
that, between images, wait inside the compiled code: `predict_parts` with a `control`
array loops over images (wait_for_image), spinning and then yielding the core, and only
after IDLE seconds without an image returns to sleep on a condition here. The caller
copies the image into a buffer the parts share, posts it (post_image) and computes part 0
itself; the other parts never take the GIL while they are awake, so nothing waits for it.
A part that sleeps is woken by the next image (that call pays the wake-up once).

The threads stop when the runner is dropped (a workspace grew) or the process exits. The
runner computes alone, on the calling thread, when called from one of cnntool's pool
threads (the parts would queue behind it) or in a forked child (which has no part threads).
A second thread calling while a first is inside waits for it: both would use the same
activations (worker 0's workspace), so they take turns rather than compute at once.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import numpy as np

from cnntool.errors import CnntoolError
from cnntool.kernels.parts import MAX_WAIT, post_image
from cnntool.system.threads import POOL_PREFIX, use_blas_threads


class SharedImage:
    """predict for one image on `parts` threads: call it as run(x, probs)."""

    def __init__(
        self, compiled: Any, parts: int, spaces: list[tuple], alone: Any, input_shape: tuple, classes: int,
        on_failure: Any,
    ) -> None:  # fmt: skip
        self.compiled = compiled
        self.parts = parts
        self.alone = alone
        self.on_failure = on_failure
        self.flags = np.zeros(2, np.int64)  # the barrier's: arrived, generation
        # images posted, stop, then the images each part has taken
        self.control = np.zeros(2 + parts, np.int64)
        self.x = np.zeros((1, *input_shape), np.float32)
        self.probs = np.zeros((1, classes), np.float32)
        self.first = spaces[0]
        self.busy = threading.Lock()
        self.pid = os.getpid()
        self.wake = threading.Condition()
        self.asleep = [False] * parts
        state = (compiled, parts, self.flags, self.control, self.x, self.probs, self.wake, self.asleep)
        self.threads = []
        for part in range(1, parts):
            name = f"{POOL_PREFIX}-part-{part}"
            self.threads.append(
                threading.Thread(target=serve, args=(part, spaces[part], *state), daemon=True, name=name)
            )
        for thread in self.threads:
            thread.start()
        # the threads hold the arrays, not this object: dropping it stops them
        weakref.finalize(self, stop, self.control, self.wake)

    def __call__(self, x: np.ndarray, probs: np.ndarray) -> None:
        if (
            threading.current_thread().name.startswith(POOL_PREFIX)
            or os.getpid() != self.pid  # a forked child has no part threads
        ):
            return self.alone(x, probs)
        with self.busy:  # a second calling thread waits: the image buffers are shared
            self.run(x, probs)

    def run(self, x: np.ndarray, probs: np.ndarray) -> None:
        """One image: post it to the awake parts, compute part 0 here, wait for the rest."""
        use_blas_threads(1)
        self.flags[0] = 0  # no part is at a barrier: one that gave up last time left its count
        np.copyto(self.x, x)
        post_image(self.control)
        if any(self.asleep):
            with self.wake:
                self.wake.notify_all()
        try:
            finished = self.compiled(0, self.parts, self.flags, self.control, self.x, probs, *self.first)
        except Exception as exc:
            raise self.on_failure(exc) from exc
        if not finished:
            raise CnntoolError(
                f"the {self.parts} threads sharing one image did not all finish within "
                f"{MAX_WAIT:g} s (a thread failed, or the machine is overloaded); with one thread "
                "(--threads 1, CNNTOOL_THREADS=1 or cnntool.set_threads(1)) the image is computed alone"
            )


def serve(
    part: int, arrays: tuple, compiled: Any, parts: int, flags: np.ndarray, control: np.ndarray,
    x: np.ndarray, probs: np.ndarray, wake: threading.Condition, asleep: list[bool],
) -> None:  # fmt: skip
    """Part `part`'s thread: image after image inside predict_parts while they come, asleep
    on `wake` when they stop coming, until told to stop (control[1])."""
    while control[1] == 0:
        compiled(part, parts, flags, control, x, probs, *arrays)  # returns after IDLE s without an image
        with wake:
            asleep[part] = True
            while control[0] == control[2 + part] and control[1] == 0:
                wake.wait()
            asleep[part] = False


def stop(control: np.ndarray, wake: threading.Condition) -> None:
    control[1] = 1
    with wake:
        wake.notify_all()
