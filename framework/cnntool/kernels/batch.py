"""Assembling a training batch from the dataset without copying the whole set."""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True, nogil=True)
def gather_batch(images, labels, order, start, scale, mean, inv_std, out, out_labels):
    """out[b] = (images[order[start + b]] * scale - mean) * inv_std, as float32."""
    per_image = out.size // out.shape[0]
    src = images.reshape((images.shape[0], per_image))
    dst = out.reshape((out.shape[0], per_image))
    s = np.float32(scale)
    m = np.float32(mean)
    k = np.float32(inv_std)
    for b in range(out.shape[0]):
        row = order[start + b]
        out_labels[b] = labels[row]
        source = src[row]
        target = dst[b]
        for i in range(per_image):
            target[i] = (np.float32(source[i]) * s - m) * k
