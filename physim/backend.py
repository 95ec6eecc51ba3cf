"""The Taichi runtime: the only place in physim that calls ``ti.init``.

Importing physim initializes nothing. The first solver that needs Taichi calls
:func:`ensure_init`, which initializes with the defaults (or ``PHYSIM_ARCH`` /
``PHYSIM_PRECISION`` from the environment); call :func:`init` yourself to choose.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass

import numpy as np
import taichi as ti

__all__ = ["init", "ensure_init", "config", "BackendConfig", "real", "grad"]

_ARCHES = {
    "cpu": ti.cpu,
    "cuda": ti.cuda,
    "vulkan": ti.vulkan,
    "metal": ti.metal,
    "opengl": ti.opengl,
}
_PRECISIONS = {"f32": ti.f32, "f64": ti.f64}


@dataclass(frozen=True)
class BackendConfig:
    """What :func:`init` chose. ``arch`` is the name actually running (never ``auto``)."""

    arch: str
    precision: str
    seed: int
    debug: bool
    fast_compile: bool = False
    deterministic: bool = False

    @property
    def real(self):
        """Taichi float type of every simulated quantity."""
        return _PRECISIONS[self.precision]

    @property
    def np_real(self):
        return np.float64 if self.precision == "f64" else np.float32


_config: BackendConfig | None = None


def _cuda_available() -> bool:
    try:
        import ctypes

        from taichi._lib import core as _core

        ctypes.CDLL("libcuda.so.1")  # the driver, not just a CUDA-enabled wheel
        return bool(_core.with_cuda())
    except Exception:  # pragma: no cover - depends on the machine
        return False


#: default size limit of Taichi's offline kernel cache, MiB (``$PHYSIM_OFFLINE_CACHE_MB``)
CACHE_MB = 1024


def _cache_limit() -> dict:
    """Taichi's offline-cache size limit for ``ti.init``.

    Taichi's own default, 100 MB with least-recently-used eviction, is smaller than the
    kernels of physim's solvers together (its test suite writes ~120 MB): kernels were evicted
    and compiled again in every new process. Measured: the fold_paper demo's first step took
    76.6 s with an empty cache and 5.5 s from the cache (it spent 73 s compiling with the
    100 MB limit, evicted). ``$PHYSIM_OFFLINE_CACHE_MB`` sets the limit in MiB; Taichi's own
    ``$TI_OFFLINE_CACHE_MAX_SIZE_OF_FILES`` (bytes), when set, is left to Taichi."""
    if "TI_OFFLINE_CACHE_MAX_SIZE_OF_FILES" in os.environ:
        return {}
    raw = os.environ.get("PHYSIM_OFFLINE_CACHE_MB", str(CACHE_MB))
    try:
        mb = int(raw)
    except ValueError:
        mb = -1
    if not 0 < mb < 2048:  # Taichi stores the limit in bytes in a 32-bit int
        raise ValueError(f"PHYSIM_OFFLINE_CACHE_MB must be a whole number of MiB from 1 to 2047, got {raw!r}")
    return {"offline_cache_max_size_of_files": mb * 2**20}


def init(
    arch: str | None = None,
    precision: str | None = None,
    seed: int = 0,
    debug: bool = False,
    fast_compile: bool | None = None,
    verbose: bool = True,
    deterministic: bool | None = None,
) -> BackendConfig:
    """Start the Taichi runtime.

    Args:
        arch: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``,
            ``"vulkan"``, ``"metal"`` or ``"opengl"``. Defaults to ``$PHYSIM_ARCH``
            or ``"auto"``.
        precision: ``"f32"``, ``"f64"`` or ``"auto"``: f64 on the CPU, f32 on GPUs. On the
            CPU f32 gradients agree with f64 to ~1e-4 over hundreds of substeps and ~1e-2 over
            4,000 (every MPM material but rigid bodies; benchmarks/README.md, "Precision"), and
            were measured no faster on small scenes. Defaults to ``$PHYSIM_PRECISION`` or ``"auto"``.
        seed: seeds Taichi's, NumPy's and Python's random generators.
        debug: Taichi debug mode (bounds checks; slow).
        fast_compile: compile kernels without Taichi's advanced IR optimizations: a cold start
            is much shorter, the kernels run somewhat slower (measured on this 2-core CPU: the
            push_duck demo's fused f32 substep compiles in 17 s instead of 279 s; 3D MPM steps
            16-21 % slower, explicit FEM 46 % faster; benchmarks/README.md, "Cold compile of a 3D
            differentiable scene").
            Good for tests, demos and short scripts. Defaults to ``$PHYSIM_FAST_COMPILE == "1"``.
            In f32 the reverse-mode kernels that Taichi generates still compile with those
            passes (:func:`grad`): without them Taichi 1.7.4's reverse mode drops the gradient
            through a local variable updated in place in an unrolled loop (MPM's P2G weights: no
            d loss / d x from P2G at all), so f32 gradients drifted from f64 by 3 % after 30
            substeps and by 10^12 x after 1,000 (benchmarks/README.md, "Precision").
        verbose: print which arch was chosen.
        deterministic: bitwise-reproducible runs on the CPU: Taichi runs every kernel on one
            thread (``cpu_max_num_threads=1``), so the atomic sums of the particle-to-grid
            transfer and of the gradients add in the same order every run. Threaded runs of the
            same inputs differ in the last bits (see ``benchmarks/README.md``, "Precision");
            this option trades the CPU's other cores for identical results. Only ``arch="cpu"``.
            Defaults to ``$PHYSIM_DETERMINISTIC == "1"``.

    Calling ``init`` again with different settings restarts Taichi; every scene
    built before becomes invalid.
    """
    global _config
    arch = (arch or os.environ.get("PHYSIM_ARCH", "auto")).lower()
    precision = (precision or os.environ.get("PHYSIM_PRECISION", "auto")).lower()
    if precision not in _PRECISIONS and precision != "auto":
        raise ValueError(f"precision must be 'f32', 'f64' or 'auto', got {precision!r}")
    if arch not in _ARCHES and arch != "auto":
        raise ValueError(f"arch must be 'auto' or one of {sorted(_ARCHES)}, got {arch!r}")
    if arch == "auto":
        arch = "cuda" if _cuda_available() else "cpu"
    if precision == "auto":
        precision = "f64" if arch == "cpu" else "f32"
    if fast_compile is None:
        fast_compile = os.environ.get("PHYSIM_FAST_COMPILE", "0") == "1"
    if deterministic is None:
        deterministic = os.environ.get("PHYSIM_DETERMINISTIC", "0") == "1"
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be True or False, got {deterministic!r}")
    if deterministic and arch != "cpu":
        raise ValueError(f"deterministic=True is for arch='cpu' (one CPU thread), got arch={arch!r}")
    new = BackendConfig(arch=arch, precision=precision, seed=int(seed), debug=bool(debug),
                        fast_compile=bool(fast_compile), deterministic=deterministic)
    if _config == new:
        return _config
    if _config is not None:
        ti.reset()
        from . import parts

        parts._forget()
    threads = {"cpu_max_num_threads": 1} if deterministic else {}
    ti.init(
        arch=_ARCHES[arch],
        default_fp=_PRECISIONS[precision],
        random_seed=int(seed),
        debug=bool(debug),
        advanced_optimization=not fast_compile,  # f32 adjoints: see grad()
        offline_cache=os.environ.get("PHYSIM_OFFLINE_CACHE", "1") == "1",
        **_cache_limit(),
        fast_math=os.environ.get("PHYSIM_FAST_MATH", _fast_math_default(arch, precision)) == "1",
        log_level=ti.WARN if debug else ti.ERROR,
        **threads,
    )
    np.random.seed(int(seed) % (2**32))
    random.seed(int(seed))
    got = "cuda" if ti.lang.impl.current_cfg().arch == ti.cuda else arch
    if got != arch:
        warnings.warn(f"physim: asked for arch {arch!r}, Taichi fell back to {got!r}", stacklevel=2)
    _config = BackendConfig(arch=got, precision=precision, seed=int(seed), debug=bool(debug),
                            fast_compile=bool(fast_compile), deterministic=deterministic)
    if verbose:
        print(f"[physim] backend: arch={_config.arch} precision={precision}")
    return _config


def _fast_math_default(arch: str, precision: str) -> str:
    """``$PHYSIM_FAST_MATH``'s default: on, except f32 on the CPU. There, LLVM's fast-math
    breaks reverse mode through the generic MPM kernels (``Scene(specialize=False)``): the
    stress kernel's adjoint came out 300x too large and gradients grew ~8x per substep, to
    inf within 50 substeps (a block pressed by a tool, every material; the specialized
    kernels and f64 were unaffected). See benchmarks/README.md, "Precision (f32 vs f64)"."""
    return "0" if arch == "cpu" and precision == "f32" else "1"


def ensure_init() -> BackendConfig:
    """Initialize with defaults if :func:`init` was not called yet."""
    return _config if _config is not None else init()


def config() -> BackendConfig | None:
    """The running configuration, or ``None`` before :func:`init`."""
    return _config


def real():
    """The Taichi float type in use (initializes with defaults if needed)."""
    return ensure_init().real


def grad(kernel, *args):
    """Launch the reverse-mode kernel Taichi generates for ``kernel`` (``kernel.grad(*args)``).

    Every physim part launches Taichi-generated adjoints through here. With ``fast_compile``
    in f32 the adjoint is compiled with Taichi's advanced optimizations switched on for its
    compile only (see :func:`init`'s ``fast_compile``: f32 adjoints are wrong without them);
    Taichi reads that setting when a kernel is first compiled and keys its offline cache on
    it, so the forward kernels keep their fast compile and the cache never mixes the two."""
    cfg = _config
    if cfg is None or not cfg.fast_compile or cfg.precision != "f32":
        return kernel.grad(*args)
    compile_config = ti.lang.impl.current_cfg()
    before = compile_config.advanced_optimization
    compile_config.advanced_optimization = True
    try:
        return kernel.grad(*args)
    finally:
        compile_config.advanced_optimization = before
