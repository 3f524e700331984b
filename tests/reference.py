"""Plain numpy (float64) implementations the kernels are checked against. They share no
code with cnntool: convolution here is a sum over kernel offsets of strided slices, not
im2col; pooling uses explicit windows."""

import numpy as np


def pad_image(x, top, left, bottom, right):
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def conv2d(x, weight, bias, stride, pads):
    """y[n,o,p,q] = b[o] + sum_{c,i,j} w[o,c,i,j] x_pad[n,c,p*sh+i,q*sw+j]."""
    sh, sw = stride
    xp = pad_image(x.astype(np.float64), *pads)
    _, _, kh, kw = weight.shape
    oh = (xp.shape[2] - kh) // sh + 1
    ow = (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], weight.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            out += np.einsum("nchw,oc->nohw", window, weight[:, :, i, j].astype(np.float64))
    if bias is not None:
        out += bias.astype(np.float64)[None, :, None, None]
    return out


def conv2d_backward(x, weight, grad_out, stride, pads):
    """(dx, dW, db) for the conv2d above."""
    sh, sw = stride
    top, left, bottom, right = pads
    xp = pad_image(x.astype(np.float64), *pads)
    g = grad_out.astype(np.float64)
    _, _, kh, kw = weight.shape
    oh, ow = g.shape[2], g.shape[3]
    dxp = np.zeros_like(xp)
    dw = np.zeros(weight.shape)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + sh * (oh - 1) + 1, sh)
            cols = slice(j, j + sw * (ow - 1) + 1, sw)
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", g, xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += np.einsum("nohw,oc->nchw", g, weight[:, :, i, j].astype(np.float64))
    dx = dxp[:, :, top : xp.shape[2] - bottom, left : xp.shape[3] - right]
    return dx, dw, g.sum(axis=(0, 2, 3))


def maxpool2d(x, pool, stride):
    """(out, mask) where mask marks, per window, the first maximum (row-major order)."""
    ph, pw = pool
    sh, sw = stride
    n, c, h, w = x.shape
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    out = np.zeros((n, c, oh, ow))
    winners = np.zeros((n, c, oh, ow, 2), dtype=int)
    for p in range(oh):
        for q in range(ow):
            window = x[:, :, p * sh : p * sh + ph, q * sw : q * sw + pw].reshape(n, c, -1)
            arg = window.argmax(axis=2)
            out[:, :, p, q] = window.max(axis=2)
            winners[:, :, p, q, 0] = p * sh + arg // pw
            winners[:, :, p, q, 1] = q * sw + arg % pw
    return out, winners


def maxpool2d_backward(x_shape, winners, grad_out):
    dx = np.zeros(x_shape)
    n, c, oh, ow = grad_out.shape
    for a in range(n):
        for b in range(c):
            for p in range(oh):
                for q in range(ow):
                    h, w = winners[a, b, p, q]
                    dx[a, b, h, w] += grad_out[a, b, p, q]
    return dx


def softmax(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits, labels):
    """(mean loss, gradient) from logits."""
    p = softmax(logits)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels]).mean()
    grad = p.copy()
    grad[np.arange(n), labels] -= 1
    return loss, grad / n
