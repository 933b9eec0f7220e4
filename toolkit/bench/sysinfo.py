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


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_info() -> dict:
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "toolkit_version": _version("open-autoglm-edge"),
        "tvm_version": _version("apache-tvm"),
        "onnxruntime_version": _version("onnxruntime"),
        "litert_version": _version("ai-edge-litert"),
    }
