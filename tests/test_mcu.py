"""Exported models on emulated microcontrollers: a Cortex-M4 (QEMU's mps2-an386, hardware float32)
and a Cortex-M0 (QEMU's microbit, 16 KiB of RAM, no FPU: soft float), built with Debian's
arm-none-eabi-gcc and run under qemu-system-arm with semihosting (examples/mcu).

Each run prints the forward pass's outputs on a few samples with the exported weights and, for a
training export, the losses of some SGD steps on the device and the parameters they end with, as
the bits of each float32; all must match the host's float32 module to 1e-5 (relative to the
largest value). An int8 export (``--quantize int8``, examples/mcu/main_int8.c) prints its outputs,
which must equal gradc's Python reference of the integer path bit for bit. The flash, RAM and stack each build needs are measured (``arm-none-eabi-size``
and a painted stack) and printed (``pytest -s tests/test_mcu.py``); the README's table of them is
checked against the measurement.

CI installs the compiler and QEMU (``.ci/run``), so these tests do not skip there.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import gradc
from conftest import EXAMPLES, ROOT

CC = shutil.which("arm-none-eabi-gcc")
SIZE = shutil.which("arm-none-eabi-size")
QEMU = shutil.which("qemu-system-arm")
pytestmark = pytest.mark.skipif(CC is None or QEMU is None,
                                reason="needs arm-none-eabi-gcc and qemu-system-arm (Debian: gcc-arm-none-eabi, "
                                       "libnewlib-arm-none-eabi, qemu-system-arm)")
MCU = os.path.join(EXAMPLES, "mcu")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow", "-Wdouble-promotion",
          "-Wfloat-conversion"]
BOARDS = {
    # name: (QEMU machine, compiler flags, flash, RAM, stack, lanes of the export)
    "cortex-m4": ("mps2-an386", ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-O2"],
                  "4M", "4M", "64K", 16),
    "cortex-m0": ("microbit", ["-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft", "-Os"], "256K", "16K", "4K", 1),
}
# (board, model): (samples, SGD steps on the device: 0 for an inference-only export)
RUNS = {("cortex-m4", "moons"): (24, 5), ("cortex-m4", "digits"): (20, 3),
        ("cortex-m0", "moons"): (16, 5), ("cortex-m0", "digits"): (8, 0)}
LR = 0.05
RTOL = 1e-5
MEASURED = {}


def _hexf(v):
    return float(np.float32(v)).hex() + "f"


def _data_h(x, y, steps):
    def rows(a, fmt):
        a = np.asarray(a).ravel()
        return ",\n    ".join(", ".join(fmt(v) for v in a[i:i + 6]) for i in range(0, len(a), 6))
    yfmt = (lambda v: str(int(v))) if y.dtype.kind == "i" else _hexf
    return (f"#define MCU_N {len(x)}\n#define MCU_STEPS {steps}\n#define MCU_LR {_hexf(LR)}\n"
            f"static const gradc_real mcu_x[] = {{\n    {rows(x, _hexf)}\n}};\n"
            f"static const gradc_target mcu_y[] = {{\n    {rows(y, yfmt)}\n}};\n")


def _samples(mod, name, n):
    rng = np.random.default_rng(7)
    if name == "moons":
        x = rng.uniform(-1.5, 2.5, size=(n, 2)).astype(np.float32)
        y = np.where(x[:, 0] + x[:, 1] > 0.5, 1.0, -1.0).astype(np.float32)
    else:
        x = rng.uniform(0, 1, size=(n, 64)).astype(np.float32)
        y = rng.integers(0, 10, size=n).astype(np.int32)
    return x, y


def _parse(stdout):
    out = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"(\w+) ([0-9a-f]{8})", line.strip())
        if m:
            out.setdefault(m.group(1), []).append(int(m.group(2), 16))
    return out


def _floats(words):
    return np.array(words, dtype=np.uint32).view(np.float32).astype(np.float64)


def _close(got, want, what):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    assert got.shape == want.shape, f"{what}: {got.size} numbers from the device, {want.size} on the host"
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got - want).max()) / scale
    assert err <= RTOL, f"{what}: the device and the host differ by {err:.3g} relative (> {RTOL})"


def _build_and_run(tmp_path, board, header, sources, extra=()):
    """Build ``sources`` (with startup.c) for ``board`` under the strict flags, run it under QEMU:
    the tagged numbers it printed, and the ELF."""
    machine, flags, flash, ram, stack, _ = BOARDS[board]
    elf = tmp_path / "app.elf"
    cmd = [CC, *flags, *STRICT, *extra, "-ffunction-sections", "-fdata-sections", f'-DGRADC_HEADER="{header}"',
           f"-I{tmp_path / 'export'}", f"-I{MCU}", f"-I{tmp_path}", *map(str, sources),
           os.path.join(MCU, "startup.c"), "-nostartfiles", "--specs=nosys.specs",
           "-T", os.path.join(MCU, "cortex-m.ld"), "-Wl,--gc-sections",
           f"-Wl,--defsym=FLASH_SIZE={flash},--defsym=RAM_SIZE={ram},--defsym=STACK_SIZE={stack}",
           "-o", str(elf), "-lm"]
    p_cc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert p_cc.returncode == 0, f"{' '.join(cmd)}\n{p_cc.stderr[-4000:]}"
    run = subprocess.run([QEMU, "-M", machine, "-display", "none", "-monitor", "none", "-serial", "none",
                          "-semihosting-config", "enable=on,target=native,chardev=out", "-chardev", "stdio,id=out",
                          "-kernel", str(elf)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert run.returncode == 0 and "fault" not in run.stdout, \
        f"qemu: {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    r = _parse(run.stdout)
    assert r.get("forward") == [0], run.stdout[-2000:]
    return r, elf


def _flash_ram(elf):
    """Flash (vector table, code, constants, initialized data) and RAM (data, bss) of an ELF."""
    sizes = subprocess.run([SIZE, "-A", str(elf)], capture_output=True, text=True).stdout
    sec = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\.\w+)\s+(\d+)", sizes, re.M)}
    return (sec.get(".isr_vector", 0) + sec.get(".text", 0) + sec.get(".ARM.exidx", 0) + sec.get(".data", 0),
            sec.get(".data", 0) + sec.get(".bss", 0))


@pytest.mark.parametrize("board,name", list(RUNS))
def test_exported_model_on_an_emulated_mcu_matches_the_host(tmp_path, board, name):
    from gradc.api import export, load_model_file
    lanes = BOARDS[board][5]
    n, steps = RUNS[board, name]
    model_file = os.path.join(EXAMPLES, name, "model.py")
    mod = gradc.load(model_file, dtype="float32")
    p = mod.init_params(seed=1)
    x, y = _samples(mod, name, n)
    d = tmp_path / "export"
    export(load_model_file(model_file), str(d), weights=dict(p), dtype="float32", inference_only=steps == 0,
           lanes=lanes)
    M = name
    (tmp_path / "data.h").write_text(_data_h(x, y, steps))
    r, elf = _build_and_run(tmp_path, board, f"{M}.h", [os.path.join(MCU, "main.c"), d / f"{M}.c",
                                                        d / f"{M}_weights.c"])
    # the host: the same float32 module, the same weights and samples
    want = mod.forward(p, x=x)
    _close(_floats(r["out"]), next(iter(want.values())), f"{board} {name}: outputs")
    if steps:
        assert r["step"] == [0] * steps
        q = {k: v.copy() for k, v in p.items()}
        losses = []
        for _ in range(steps):
            L, g = mod.loss_and_grad(q, x=x, **{next(iter(mod.target_shapes)): y})
            losses.append(L)
            for k in q:
                q[k] -= np.float32(LR) * g[k]
        _close(_floats(r["loss"]), losses, f"{board} {name}: the SGD steps' losses")
        _close(_floats(r["param"]), np.concatenate([q[k].ravel() for k in q]), f"{board} {name}: parameters")
    # the export's own stack estimate (NAME_info()->stack_bytes) bounds what the device used, but for
    # main's and the reset handler's frames
    est = int(re.search(r"(\d+), \"[0-9a-f]{64}\", \"[^\"]*\"\n\};", (d / f"{M}.c").read_text()).group(1))
    assert r["stack"][0] <= est + 256, f"{board} {name}: the stack went {r['stack'][0]} bytes deep, estimate {est}"
    flash_b, ram_b = _flash_ram(elf)
    MEASURED[board, name] = (steps > 0, flash_b, ram_b, r["stack"][0])
    print(f"\n| {board} | {name} | {'training' if steps else 'inference'} | {flash_b:,} B | {ram_b:,} B "
          f"| {r['stack'][0]:,} B |")


# int8 exports: (board, model): samples; seeded weights, the calibration inputs drawn as the samples are
INT8_RUNS = {("cortex-m0", "moons"): 16, ("cortex-m0", "digits"): 8, ("cortex-m0", "digits_cnn"): 4,
             ("cortex-m4", "digits_cnn"): 4}


@pytest.mark.parametrize("board,name", list(INT8_RUNS))
def test_int8_export_on_an_emulated_mcu_equals_the_python_reference_bit_for_bit(tmp_path, board, name):
    from gradc.api import export, load_model_file, lower_model
    from gradc.quantize import plan
    model_file = os.path.join(EXAMPLES, name, "model.py")
    mod = gradc.load(model_file, dtype="float32")
    p = mod.init_params(seed=1)
    n = INT8_RUNS[board, name]
    shape = next(iter(mod.input_shapes.values()))
    x, _ = _samples(mod, "moons" if name == "moons" else "digits", n + 64)
    x = x.reshape((-1,) + tuple(shape))
    calib, x = x[n:], x[:n]
    d = tmp_path / "export"
    model = load_model_file(model_file)
    export(model, str(d), weights=dict(p), quantize="int8", calibrate={"x": calib})
    xs = ",\n    ".join(", ".join(_hexf(v) for v in row) for row in x.reshape(n, -1))
    (tmp_path / "data.h").write_text(f"#define MCU_N {n}\nstatic const float mcu_x[] = {{\n    {xs}\n}};\n")
    r, elf = _build_and_run(tmp_path, board, f"{name}.h", [os.path.join(MCU, "main_int8.c"), d / f"{name}.c"],
                            ["-Wconversion"])
    prog = lower_model(model)
    want = plan(prog, {k: np.asarray(v, np.float64) for k, v in p.items()}, {"x": calib}).reference({"x": x})
    want_bits = np.asarray(next(iter(want.values())), np.float32).ravel().view(np.uint32)
    assert list(map(int, want_bits)) == r["out"], f"{board} int8 {name}: the device's outputs are not the " \
                                                   f"reference's bits"
    flash_b, ram_b = _flash_ram(elf)
    MEASURED[board, name, "int8"] = (flash_b, ram_b, r["stack"][0])
    print(f"\n| {board} | {name} | int8 inference | {flash_b:,} B | {ram_b:,} B | {r['stack'][0]:,} B |")


def test_readme_states_the_measured_flash_ram_and_stack():
    """The README's table of the emulated runs holds what the runs above measured."""
    if len(MEASURED) < len(RUNS) + len(INT8_RUNS):
        pytest.skip("needs every run above in this session")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    for key, vals in MEASURED.items():
        if len(key) == 3:
            (board, name, _), (flash_b, ram_b, stack_b) = key, vals
            export = "int8 inference"
        else:
            (board, name), (train, flash_b, ram_b, stack_b) = key, vals
            export = "training" if train else "inference"
        row = f"| {board} | {name} | {export} | {flash_b:,} B | {ram_b:,} B | {stack_b:,} B |"
        assert row in text, f"README.md lacks the measured row {row} (pytest -s tests/test_mcu.py prints them)"
