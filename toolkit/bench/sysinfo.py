"""What machine and software a run was taken on (recorded with every run)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction-set features the schedules and the reference runtimes choose kernels by.
_ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_tile", "amx_int8", "asimd", "asimddp", "sve", "i8mm")


def cpu_features() -> list[str]:
    """This CPU's ISA features of interest (from /proc/cpuinfo), in a fixed order."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return [f for f in _ISA_FLAGS if f in flags]


def describe_cpu() -> str:
    """One line for a benchmark record: model name, LLVM's name for the core, the ISA features."""
    name = cpu_model()
    try:
        import tvm

        core = tvm.target.codegen.llvm_get_system_cpu()
    except Exception:  # noqa: BLE001 - a description, never a failure
        core = ""
    features = cpu_features()
    detail = "; ".join(x for x in (core, ", ".join(features) or "no AVX2/AVX-512/NEON flags found") if x)
    return f"{name} ({detail})"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_info() -> dict:
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "toolkit_version": _version("open-autoglm-edge"),
        "tvm_version": _version("apache-tvm"),
        "onnxruntime_version": _version("onnxruntime"),
        "litert_version": _version("ai-edge-litert"),
    }
