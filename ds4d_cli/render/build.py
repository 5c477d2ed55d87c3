"""Build and load the C++ CPU kernels as one plain shared library.

``csrc/raster.cpp`` is the compositor, ``csrc/ssim.cpp`` the fit's fused SSIM and image
losses, ``csrc/hexplane.cpp`` the deformation's HexPlane field, ``csrc/sample.cpp`` the
per-Gaussian feature sampling, ``csrc/tssf.cpp`` TSSF's distance-aware fusion; all share the
thread pool of ``csrc/pool.hpp``. The kernels have
a C ABI and no torch headers, so one ``g++`` call builds them in a few seconds. The library is cached per source hash under
``$DS4D_CACHE_DIR`` (default ``~/.cache/ds4d``), written atomically so concurrent processes
never load half a file. ``make setup`` runs ``python -m ds4d_cli.render.build``; otherwise the
first CPU render builds it. Set ``DS4D_RENDER_EXT=0`` to force the pure-torch fallback.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / "raster.cpp", CSRC / "ssim.cpp", CSRC / "hexplane.cpp", CSRC / "sample.cpp", CSRC / "tssf.cpp"]
HEADERS = [CSRC / "pool.hpp"]
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-ffp-contract=off", "-Wno-psabi"]
# Tuned for the building CPU when the compiler allows it (~15% faster); the cache key includes
# the CPU's identity so a library is never loaded on a machine it was not built for.
NATIVE = ["-march=native"]
ABI_VERSION = 10

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_tried = False
_error: Optional[str] = None


def cache_dir() -> Path:
    base = os.environ.get("DS4D_CACHE_DIR")
    if base:
        return Path(base) / "render"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "ds4d" / "render"


def compiler() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _cpu_identity() -> bytes:
    import platform

    ident = platform.machine().encode()
    try:
        with open("/proc/cpuinfo", "rb") as fh:
            for line in fh:
                if line.startswith((b"model name", b"flags", b"Features", b"CPU part")):
                    ident += line
                    if line.startswith(b"flags"):
                        break
    except OSError:
        pass
    return ident


def library_path() -> Path:
    key = b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join(FLAGS + NATIVE).encode() + _cpu_identity()
    digest = hashlib.sha256(key).hexdigest()[:16]
    return cache_dir() / f"ds4d_raster_{digest}.so"


def build(verbose: bool = False) -> Path:
    """Compile the kernel if its cached library is missing; return the library path."""
    target = library_path()
    if target.exists():
        return target
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *FLAGS, *NATIVE, *map(str, SOURCES), "-o", tmp], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:  # e.g. a compiler without -march=native: portable build
            proc = subprocess.run([cxx, *FLAGS, *map(str, SOURCES), "-o", tmp], capture_output=True,
                                  text=True, timeout=300)
        if proc.returncode != 0:
            names = ", ".join(p.name for p in SOURCES)
            raise RuntimeError(f"compiling {names} failed:\n{proc.stderr.strip()}")
        if verbose and proc.stderr:
            print(proc.stderr, file=sys.stderr)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib: ctypes.CDLL) -> None:
    P, I64, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    signatures = {
        "project": ([P] * 14 + [I], None),
        "project_backward": ([P] * 17 + [I], None),
        "bin": ([I64, I64, I, I, P, P, P, I64, P, P, P, I], I64),
        "forward": ([I64, I64, I, I, I] + [P] * 14 + [I], None),
        "backward": ([I64, I64, I, I, I] + [P] * 12 + [I], None),
        "record_size": ([I], I),
        "ssim": ([I64, I, I] + [P] * 3 + [I] + [P] * 4 + [I], None),
        "ssim_backward": ([I64, I, I] + [P] * 3 + [I] + [P] * 5 + [I], None),
        "hexplane": ([I64, I64, I, I, P, I] + [P] * 5 + [I], None),
        "sample_maps": ([I64, I, I, I, I, I64] + [P] * 3 + [I], None),
        "sample_maps_backward": ([I64, I, I, I, I, I64] + [P] * 3 + [I], None),
        "tssf_da": ([I64, I, I64, I, P, P, ctypes.c_double, P, I], None),
        "tssf_da_backward": ([I64, I, I64, I, P, P, ctypes.c_double, P, P, P, I], None),
        "render_losses": ([I64, I, I] + [P] * 6 + [I] + [P] * 8 + [I, I], None),
        "render_losses_backward": ([I64, I, I] + [P] * 5 + [I] + [P] * 11 + [I, I], None),
        "hexplane_backward": ([I64, I64, I, I, P, I, P, P, I64] + [P] * 4 + [I], None),
    }
    for sfx in ("f32", "f64"):
        for name, (args, res) in signatures.items():
            fn = getattr(lib, f"ds4d_{name}_{sfx}")
            fn.argtypes = args
            fn.restype = res
    lib.ds4d_probe_flops.argtypes = [I64, I]
    lib.ds4d_probe_flops.restype = ctypes.c_double


def load(auto_build: bool = True) -> Optional[ctypes.CDLL]:
    """The loaded kernel library, or None (the caller falls back to pure torch).

    Tries once per process; a failed build warns once with the reason.
    """
    global _lib, _tried, _error
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("DS4D_RENDER_EXT", "1").lower() in ("0", "off", "false", "no"):
            _error = "disabled by DS4D_RENDER_EXT"
            return None
        try:
            path = library_path()
            if not path.exists():
                if not auto_build:
                    _error = "not built (run: python -m ds4d_cli.render.build)"
                    return None
                path = build()
            lib = ctypes.CDLL(str(path))
            if lib.ds4d_raster_abi_version() != ABI_VERSION:
                raise RuntimeError("stale kernel library (ABI mismatch)")
            _declare(lib)
            _lib = lib
        except Exception as exc:  # any failure means: use the torch fallback
            _error = str(exc)
            warnings.warn(
                f"ds4d: C++ CPU rasterizer unavailable ({_error.splitlines()[0]}); "
                "using the slower pure-torch path",
                RuntimeWarning,
                stacklevel=2,
            )
        return _lib


def load_error() -> Optional[str]:
    """Why :func:`load` returned None (None when it loaded or was not tried yet)."""
    return _error


def main() -> int:
    import time

    t0 = time.perf_counter()
    try:
        path = build(verbose=True)
    except Exception as exc:
        print(f"ds4d: building the CPU rasterizer failed: {exc}", file=sys.stderr)
        print("ds4d: the pure-torch fallback will be used (slower)", file=sys.stderr)
        return 1
    lib = load()
    if lib is None:
        print(f"ds4d: built {path} but it does not load: {_error}", file=sys.stderr)
        return 1
    print(f"CPU rasterizer ready: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
