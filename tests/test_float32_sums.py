"""float32 sums over a batch (issue 15 item 4): a loss or gradient over 2**20 identical samples stays
within 1e-6 of float64. The kernels sum each chunk of 256 samples, then add the chunks with Kahan's
compensation; a running float32 sum was 1% off at 2**20 samples."""
import numpy as np
import pytest

import gradc as gc

N = 2 ** 20


@pytest.fixture(scope="module")
def moons_pair():
    import os
    from conftest import EXAMPLES
    path = os.path.join(EXAMPLES, "moons", "model.py")
    m64, m32 = gc.load(path), gc.load(path, dtype="float32")
    p64 = m64.init_params(seed=0)
    p32 = m32.init_params(seed=0)
    p32.flat[:] = p64.flat          # the same parameters, exactly representable in float32
    p64.flat[:] = p32.flat
    return m64, m32, p64, p32


@pytest.mark.parametrize("threads", [1, 2])
def test_loss_and_gradient_over_2_20_identical_samples_match_float64(moons_pair, threads):
    m64, m32, p64, p32 = moons_pair
    x = np.array([[0.3, -0.7]])
    X32, Y32 = np.repeat(x, N, 0).astype(np.float32), np.full(N, -1.0, dtype=np.float32)
    X64, Y64 = X32.astype(np.float64), Y32.astype(np.float64)
    m32.set_threads(threads)
    try:
        L32, g32 = m32.loss_and_grad(p32, x=X32, y=Y32)
        L32_only = m32.loss(p32, x=X32, y=Y32)
    finally:
        m32.set_threads(1)
    L64, g64 = m64.loss_and_grad(p64, x=X64, y=Y64)
    assert abs(L32 - L64) <= 1e-6 * abs(L64), (L32, L64)
    assert abs(L32_only - L64) <= 1e-6 * abs(L64), (L32_only, L64)
    err = np.max(np.abs(g32.flat.astype(np.float64) - g64.flat)) / np.max(np.abs(g64.flat))
    assert err <= 1e-6, err
