"""Make TVM emit real CUDA binaries (fatbin via nvcc) on a machine that has no GPU driver.

TVM's CUDA module code lives in `libtvm_runtime_cuda.so`, which links against the
driver (`libcuda.so.1`) and fails to load without one; TVM then silently embeds CUDA
*source* in the library, which a C++-only deployment cannot load. We load the CUDA
runtime, and, only when no driver is installed, a tiny stand-in for the few driver
symbols the module references (never called at compile time), then load TVM's CUDA
module so its codegen registers and nvcc compiles device code at build time.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from .errors import ToolchainError

_DRIVER_SYMBOLS = (
    "cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString", "cuLaunchKernelEx",
    "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeTiled",
)
_CUDA_HOMES = ("/usr/local/cuda", "/usr/lib/cuda", "/opt/cuda")
_enabled = False


def find_nvcc() -> str:
    """Path of nvcc, from PATH, $CUDA_HOME or the usual install places."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), *_CUDA_HOMES):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    raise ToolchainError(
        "CUDA targets need nvcc to compile device code at build time, and none was found: "
        "install the CUDA toolkit (e.g. Debian's nvidia-cuda-toolkit) or put nvcc on PATH / set CUDA_HOME"
    )


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autoglm"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _stub_driver() -> Path:
    path = _cache_dir() / "cuda-driver-stub" / "libcuda.so.1"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.parent / "stub.c"
    src.write_text("".join(f"int {s}(void) {{ return 100; }}\n" for s in _DRIVER_SYMBOLS))
    tmp = path.with_suffix(".tmp")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ToolchainError("building for CUDA without a GPU driver needs a C compiler: apt-get install gcc")
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)], check=True)
    tmp.rename(path)
    return path


def _load_cudart(nvcc: str) -> None:
    homes = [Path(nvcc).resolve().parent.parent, *(Path(h) for h in (os.environ.get("CUDA_HOME"), *_CUDA_HOMES) if h)]
    homes += sorted(Path("/usr/local").glob("cuda-*"))
    for home in homes:
        for libdir in (home / "lib64", home / "lib", home / "targets" / "x86_64-linux" / "lib"):
            for lib in sorted(libdir.glob("libcudart.so.*")):
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                return
    raise ToolchainError(f"no libcudart.so found beside {nvcc}: reinstall the CUDA toolkit")


def enable_cuda_codegen() -> str:
    """Prepare this process to build CUDA device code with nvcc; returns nvcc's version line."""
    global _enabled
    nvcc = find_nvcc()
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    if str(Path(nvcc).parent) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = str(Path(nvcc).parent) + os.pathsep + os.environ.get("PATH", "")
    if not _enabled:
        _load_cudart(nvcc)
        try:
            ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        except OSError:
            ctypes.CDLL(str(_stub_driver()), mode=ctypes.RTLD_GLOBAL)
        import tvm

        lib = Path(tvm.__file__).resolve().parent / "lib" / "libtvm_runtime_cuda.so"
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        import tvm.support.nvcc  # noqa: F401  registers the nvcc compile callback

        _enabled = True
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return out[-1] if out else "nvcc"
