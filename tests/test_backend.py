"""Backend selection, in fresh processes (Taichi initializes once per process)."""

import pytest
from subproc import run_python


def _run(code, env=None):
    import os

    full_env = dict(os.environ)
    full_env.pop("PHYSIM_ARCH", None)
    full_env.update(env or {})
    return run_python(["-c", code], env=full_env, timeout=120)


def test_import_initializes_nothing():
    r = _run("import physim, physim.backend as b; assert b.config() is None; print('ok')")
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "[Taichi] Starting" not in r.stdout + r.stderr


def test_auto_says_which_arch_and_env_var_selects():
    r = _run("import physim; c = physim.init(); print(c.arch)")
    assert r.returncode == 0, r.stderr
    assert "[physim] backend: arch=" in r.stdout
    r = _run("import physim; print(physim.init().arch, physim.init().precision)",
             {"PHYSIM_ARCH": "cpu", "PHYSIM_PRECISION": "f64"})
    assert r.stdout.strip().splitlines()[-1] == "cpu f64"
    # precision "auto" (the default): f64 on the CPU, where f32 reverse mode through plasticity is unstable
    r = _run("import physim; print(physim.init().arch, physim.init().precision)", {"PHYSIM_ARCH": "cpu"})
    assert r.stdout.strip().splitlines()[-1] == "cpu f64"


@pytest.mark.parametrize("kw, match", [("arch='tpu'", "arch must be"), ("precision='f16'", "precision must be")])
def test_bad_backend_arguments(kw, match):
    r = _run(f"import physim; physim.init({kw})")
    assert r.returncode != 0 and match in r.stderr


def test_offline_cache_limit_is_set_and_checked():
    """Taichi's 100 MB default limit evicted physim's kernels (recompiled in every process);
    physim raises it, ``$PHYSIM_OFFLINE_CACHE_MB`` sets it, and a bad value is named."""
    code = ("import physim, taichi as ti; physim.init(arch='cpu', verbose=False); "
            "print(ti.lang.impl.current_cfg().offline_cache_max_size_of_files)")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) >= 1 << 30  # far above the suite's ~120 MB of kernels
    r = _run(code, {"PHYSIM_OFFLINE_CACHE_MB": "300"})
    assert int(r.stdout.split()[-1]) == 300 * 2**20
    for bad in ("lots", "4096"):  # not a number; past Taichi's 32-bit byte count
        r = _run(code, {"PHYSIM_OFFLINE_CACHE_MB": bad})
        assert r.returncode != 0 and "PHYSIM_OFFLINE_CACHE_MB" in r.stderr and repr(bad) in r.stderr


_ADJOINT_FLAG = """
import physim as ps, taichi as ti
ps.init(arch="cpu", precision="{precision}", fast_compile=True, verbose=False)
cfg = ti.lang.impl.current_cfg()
x = ti.field(ps.backend.real(), shape=1, needs_grad=True)
y = ti.field(ps.backend.real(), shape=1, needs_grad=True)

@ti.kernel
def scale():
    # the factor is fixed when the kernel (or its adjoint) is compiled: 1 with Taichi's advanced
    # optimizations on at that moment, 2 without
    for i in range(1):
        y[i] = x[i] * ti.static(1.0 if ti.lang.impl.current_cfg().advanced_optimization else 2.0)

x[0] = 3.0
scale()
y.grad[0] = 1.0
ps.backend.grad(scale)
print("forward", y[0], "adjoint", x.grad[0], "after", cfg.advanced_optimization)
"""


@pytest.mark.parametrize("precision, adjoint", [("f32", 1.0), ("f64", 2.0)])
def test_fast_compile_adjoints_compile_with_optimizations_in_f32_only(precision, adjoint, tmp_path):
    """fast_compile: forward kernels compile without Taichi's advanced optimizations; in f32 the
    Taichi-generated adjoints compile with them (f32 adjoints are wrong without them, see
    ``physim.backend.init``), in f64 without; the setting is restored after the launch."""
    import os

    script = tmp_path / "adjoint_flag.py"  # a file: Taichi reads a kernel's source
    script.write_text(_ADJOINT_FLAG.format(precision=precision))
    env = dict(os.environ, PHYSIM_OFFLINE_CACHE="0")
    env.pop("PHYSIM_ARCH", None)
    r = run_python([str(script)], env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    i = words.index("forward")
    assert float(words[i + 1]) == 6.0  # compiled without: factor 2
    assert float(words[i + 3]) == adjoint
    assert words[i + 5] == "False"
