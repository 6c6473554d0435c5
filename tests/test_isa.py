"""The vector unit gradc tiles for: detected from the compiler, in the cache key, and any tile size
gives the same gradients."""
import numpy as np
import pytest

from gradc import isa

AVX2_MACROS = "#define __AVX__ 1\n#define __AVX2__ 1\n#define __SSE2__ 1\n#define __x86_64__ 1\n"


def test_macros_name_the_widest_unit():
    assert isa.from_macros(AVX2_MACROS).name == "avx2"
    assert isa.from_macros(AVX2_MACROS + "#define __AVX512F__ 1\n").name == "avx512"
    assert isa.from_macros("#define __aarch64__ 1\n#define __ARM_NEON 1\n").name == "neon"
    assert isa.from_macros("#define __arm__ 1\n") is isa.GENERIC


def test_tile_budget_keeps_accumulators_in_registers():
    # float32, 16 lanes: 2 ymm a lane block on AVX2 (6 accumulators in 12 of 16 registers), 1 zmm on AVX-512
    assert isa.ISA("avx2", 32, 16).tile_budget(16, 4) == 6
    assert isa.ISA("avx512", 64, 32).tile_budget(16, 4) == 28
    assert isa.ISA("avx2", 32, 16).tile_budget(16, 8) == 3


def test_host_is_detected_from_the_compiler(monkeypatch):
    monkeypatch.delenv("GRADC_ISA", raising=False)
    assert isa.host().name in ("avx512", "avx2", "avx", "neon", "sse2", "generic")
    monkeypatch.setenv("GRADC_ISA", "sse2")
    assert isa.host().name == "sse2"
    monkeypatch.setenv("GRADC_ISA", "mmx")
    with pytest.raises(ValueError, match="GRADC_ISA"):
        isa.host()


def test_the_cache_key_carries_the_unit(monkeypatch):
    from gradc.build import c_identity
    monkeypatch.setenv("GRADC_ISA", "avx2")
    a = c_identity()
    monkeypatch.setenv("GRADC_ISA", "avx512")
    assert c_identity() != a


CONV = '''
import sympy as sp
import gradc as gc
m = gc.Model("tiles")
x = m.input("x", (9, 9))
y = m.target("y", dtype="int32")
K, c = m.param("K", (6, 2, 3, 3)), m.param("c", 6)
K0 = m.param("K0", (2, 1, 2, 2))
W, bw = m.param("W", (3, 6, 2, 2)), m.param("bw", 3)
k, l, d, e = gc.index("k"), gc.index("l"), gc.index("d"), gc.index("e")
a0 = m.define("a0", (2, 8, 8), lambda o, i, j: sp.tanh(sp.Sum(K0[o, 0, k, l] * x[i + k, j + l], (k, 0, 1), (l, 0, 1))))
p0 = m.define("p0", (2, 4, 4), lambda o, i, j: sp.Max(a0[o, 2*i, 2*j], a0[o, 2*i+1, 2*j], a0[o, 2*i, 2*j+1], a0[o, 2*i+1, 2*j+1]))
a1 = m.define("a1", (6, 2, 2), lambda o, i, j: gc.relu(sp.Sum(K[o, d, k, l] * p0[d, i + k, j + l], (d, 0, 1), (k, 0, 2), (l, 0, 2)) + c[o]))
z = m.define("zz", 3, lambda q: sp.Sum(W[q, d, k, l] * a1[d, k, l], (d, 0, 5), (k, 0, 1), (l, 0, 1)) + bw[q])
o = m.output("z", [z[0], z[1], z[2]])
m.loss(gc.softmax_cross_entropy(z, y))
'''


def test_every_tile_size_gives_the_same_gradient(write_model, monkeypatch):
    """A small CNN (convolutions, max-pooling, a dense head) tiled for AVX-512, AVX2 and no vector
    unit at all: the same loss and gradient to rounding, and against central differences."""
    import gradc
    path = write_model(CONV)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 9, 9))
    y = rng.integers(0, 3, size=37).astype(np.int32)
    out = {}
    for unit in ("avx512", "avx2", "generic"):
        monkeypatch.setenv("GRADC_ISA", unit)
        mod = gradc.load(path, dtype="float64")
        p = mod.init_params(seed=1)
        out[unit] = mod.loss_and_grad(p, x=x, y=y)
    loss, g = out["avx2"]
    for unit in ("avx512", "generic"):
        assert abs(out[unit][0] - loss) < 1e-12
        for k in g:
            np.testing.assert_allclose(out[unit][1][k], g[k], rtol=1e-10, atol=1e-13)
    h = 1e-6
    for name in ("K", "K0", "c", "W"):
        flat = p[name].reshape(-1)
        for j in range(0, flat.size, max(1, flat.size // 7)):
            old = flat[j]
            flat[j] = old + h
            lp = mod.loss(p, x=x, y=y)
            flat[j] = old - h
            lm = mod.loss(p, x=x, y=y)
            flat[j] = old
            assert abs((lp - lm) / (2 * h) - g[name].reshape(-1)[j]) < 1e-6, (name, j)


def test_workspaces_start_on_a_cache_line(write_model):
    """The runtime's workspaces start on a 64-byte boundary (a block-wide float32 vector never
    straddles two cache lines), whatever alignment numpy gives."""
    import gradc
    mod = gradc.load(write_model(CONV), dtype="float32")
    rt = mod.loss_and_grad.__self__          # the runtime object behind the module
    for _ in range(5):
        assert rt._aligned(1000).ctypes.data % 64 == 0
    assert int(rt.ffi.cast("uintptr_t", rt._work()[0])) % 64 == 0
