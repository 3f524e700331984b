"""Matrix products through BLAS sgemm (numpy's OpenBLAS, or scipy's: system/cpu.py), called
directly, for what numpy's np.dot cannot express: operands that start in the middle of an
array and have their own row stride, and results accumulated into (beta = 1). The dense
and convolution kernels use it. Products with an inner or output dimension of a few
elements (a batch of one, an image with one channel) run as plain loops instead, where
BLAS is slow.

The symbol is registered with LLVM under a fixed name when this module is imported, so the
compiled kernels refer to it by name and numba can cache them like any other function.
"""

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types

from cnntool.system.cpu import kernel_blas

for _routine, _address in kernel_blas().addresses.items():
    llvm.add_symbol(f"cnntool_{_routine}", _address)
_pointer = types.voidptr
_sgemm = types.ExternalFunction("cnntool_sgemm", types.void(*([_pointer] * 13)))
_sgemv = types.ExternalFunction("cnntool_sgemv", types.void(*([_pointer] * 11)))
_saxpy = types.ExternalFunction("cnntool_saxpy", types.void(*([_pointer] * 6)))

# numpy integers, not Python ints: numba compiles a function once per argument type, but
# once per value for plain constants, which would triple the helpers' compile time.
NO = np.int64(ord("N"))
YES = np.int64(ord("T"))
# The integer arguments' type: 64 bits, read as 32 by a 32-bit BLAS (see system/cpu.py).
INT = np.int64
# Below this inner or output size, plain loops beat a BLAS call.
SMALL = 4


@njit(cache=True, nogil=True, fastmath=True)
def scale_rows(m, n, beta, c, ldc):
    """C[m, n] *= beta (C = 0 when beta is 0, whatever C held)."""
    factor = np.float32(beta)
    for r in range(m):
        row = c[r * ldc : r * ldc + n]
        if beta == 0.0:
            row[:] = 0.0
        elif beta != 1.0:
            for col in range(n):
                row[col] *= factor


@njit(cache=True, nogil=True, fastmath=True)
def outer_products(trans_a, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """C = beta*C + alpha * op(A) @ B for a small inner size k: k rank-one updates, each an
    axpy over contiguous rows of B and C."""
    if beta != 0.0:
        scale_rows(m, n, beta, c, ldc)
    for r in range(m):
        target = c[r * ldc : r * ldc + n]
        for t in range(k):
            factor = np.float32(alpha) * (a[r * lda + t] if trans_a == NO else a[t * lda + r])
            source = b[t * ldb : t * ldb + n]
            if t == 0 and beta == 0.0:
                for col in range(n):
                    target[col] = factor * source[col]
            else:
                for col in range(n):
                    target[col] += factor * source[col]
        if k == 0 and beta == 0.0:
            target[:] = 0.0


@njit(cache=True, nogil=True, fastmath=True)
def row_dots(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """C = beta*C + alpha * A @ B.T with few rows in A or B: every entry is a dot product of
    two contiguous rows."""
    scale_rows(m, n, beta, c, ldc)
    for r in range(m):
        left = a[r * lda : r * lda + k]
        for col in range(n):
            right = b[col * ldb : col * ldb + k]
            total = np.float32(0.0)
            for t in range(k):
                total += left[t] * right[t]
            c[r * ldc + col] += np.float32(alpha) * total


@njit(cache=True, nogil=True, fastmath=True)
def vector_product(trans_a, trans_b, n, k, alpha, a, lda, b, ldb, beta, c):
    """c[0, :n] = alpha * a[0, :k] @ op(B) + beta * c through sgemv. Row-major B (k, n) is
    column-major (n, k), so c = B_cm @ a; row-major B.T needs the column-major transpose."""
    flag = np.empty(1, np.uint8)
    flag[0] = NO if trans_b == NO else YES
    sizes = np.empty(5, INT)
    sizes[0] = n if trans_b == NO else k
    sizes[1] = k if trans_b == NO else n
    sizes[2] = ldb
    sizes[3] = 1 if trans_a == NO else lda
    sizes[4] = 1
    scalars = np.empty(2, np.float32)
    scalars[0] = alpha
    scalars[1] = beta
    _sgemv(
        flag.ctypes, sizes[0:].ctypes, sizes[1:].ctypes, scalars[0:].ctypes, b.ctypes, sizes[2:].ctypes,
        a.ctypes, sizes[3:].ctypes, scalars[1:].ctypes, c.ctypes, sizes[4:].ctypes,
    )  # fmt: skip


@njit(cache=True, nogil=True, fastmath=True)
def axpy(alpha, x, y):
    """y += alpha * x over two contiguous 1-D float32 arrays of one size, through saxpy: for
    long arrays, where the BLAS threads share the memory traffic (a loop here runs on one)."""
    sizes = np.empty(2, INT)
    sizes[0] = x.size
    sizes[1] = 1
    scalar = np.empty(1, np.float32)
    scalar[0] = alpha
    _saxpy(sizes[0:].ctypes, scalar.ctypes, x.ctypes, sizes[1:].ctypes, y.ctypes, sizes[1:].ctypes)


@njit(cache=True, nogil=True, fastmath=True)
def gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Row-major C[m, n] = alpha * op(A) @ op(B) + beta * C.

    a, b, c are 1-D float32 views beginning at the matrices' first elements; lda, ldb, ldc
    are their row strides; op(X) is X or its transpose (trans = YES) and has the shape the
    product needs ([m, k] for A, [k, n] for B). Row-major C = op(A) op(B) is column-major
    C^T = op(B)^T op(A)^T, so Fortran's sgemm gets the operands swapped.
    """
    if trans_b == NO and k <= SMALL:
        outer_products(trans_a, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    if m == 1:
        # One row: a matrix-vector product, y = op(B)^T a.
        vector_product(trans_a, trans_b, n, k, alpha, a, lda, b, ldb, beta, c)
        return
    if trans_a == NO and trans_b == YES and n <= SMALL:
        row_dots(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    flags = np.empty(2, np.uint8)
    flags[0] = trans_b
    flags[1] = trans_a
    sizes = np.empty(6, INT)
    sizes[0] = n
    sizes[1] = m
    sizes[2] = k
    sizes[3] = ldb
    sizes[4] = lda
    sizes[5] = ldc
    scalars = np.empty(2, np.float32)
    scalars[0] = alpha
    scalars[1] = beta
    _sgemm(
        flags[0:].ctypes, flags[1:].ctypes, sizes[0:].ctypes, sizes[1:].ctypes, sizes[2:].ctypes,
        scalars[0:].ctypes, b.ctypes, sizes[3:].ctypes, a.ctypes, sizes[4:].ctypes,
        scalars[1:].ctypes, c.ctypes, sizes[5:].ctypes,
    )  # fmt: skip
