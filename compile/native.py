"""Build the C++ runtime (runtime_cpp/) for the host, aarch64 or armv7, and run artifacts with its runner.

`build_runtime` configures and builds `runtime_cpp` with CMake into a cache directory keyed by the
architecture and a hash of the sources, reusing a finished build. `run_artifact` runs
`autoglm-runner` on an artifact, natively or, for aarch64 and armv7 artifacts on an x86_64 machine,
under `qemu-aarch64-static` / `qemu-arm-static`, and returns the outputs and timings it reported.

The runner links the TVM runtime libraries of its architecture: the host's come from the installed
wheels, aarch64's from the aarch64 wheels on PyPI, and armv7's (no wheel exists) are built once from
the C++ sources the installed wheels ship (runtime_cpp/tvm_from_wheel); both are cached under
`<cache>/tvm-libs/`.

A finished build directory holds:

    bin/autoglm-runner, bin/classify     the runner and the example app (rpath $ORIGIN)
    bin/libtvm_runtime.so, libtvm_ffi.so the TVM runtime they load (plus libtvm_runtime_cuda.so)
    lib/libautoglm_runtime.a             the library to embed
    include/autoglm/runtime.h            its header
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import read_manifest
from .errors import AutoglmError
from targets import host_arch

__all__ = [
    "BUILD_ARCHES", "NativeRunResult", "NativeRuntimeError", "RUNNER", "build_runtime", "cache_root",
    "emulation_unavailable", "emulator_hint", "emulator_name", "run_artifact", "runner_path",
]

SOURCE_DIR = Path(__file__).resolve().parent.parent / "runtime_cpp"
RUNNER = "autoglm-runner"
TVM_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
TVM_OPTIONAL_LIBS = ("libtvm_runtime_cuda.so",)
BUILD_ARCHES = ("x86_64", "aarch64", "arm")
TVM_FROM_WHEEL_DIR = SOURCE_DIR / "tvm_from_wheel"  # CMake project: the TVM runtime from the wheels' sources
BUILD_JOBS = 2
_STAMP = ".autoglm-build.json"

# Exit codes of autoglm-runner (runtime_cpp/tools/runner.cc).
_RUNNER_EXIT = {2: "UsageError", 3: "ManifestError", 4: "ChecksumError", 5: "ArchMismatchError"}


class NativeRuntimeError(AutoglmError):
    """Building or running the C++ runtime failed; the message says what to do.

    `kind` names the runner's error class where it reported one (ChecksumError, ArchMismatchError,
    ManifestError, UsageError, Error), else "BuildError", "ToolMissing", "Crash" or "Timeout".
    """

    def __init__(self, message: str, kind: str = "Error") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class _Cross:
    compiler: str
    compiler_package: str
    toolchain_file: str
    wheel_platform: str | None  # None: no TVM wheel for this architecture, build the libraries from source
    emulator: str
    sysroot: str


# How to build for, and emulate, each architecture that is not the host's.
_CROSS = {
    "aarch64": _Cross("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "aarch64-linux-gnu.cmake",
                      "manylinux_2_28_aarch64", "qemu-aarch64-static", "/usr/aarch64-linux-gnu"),
    "arm": _Cross("arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf", "arm-linux-gnueabihf.cmake",
                  None, "qemu-arm-static", "/usr/arm-linux-gnueabihf"),
}


@dataclass
class NativeRunResult:
    """What one `autoglm-runner` run reported. Emulated timings are not comparable with native ones."""

    outputs: dict[str, np.ndarray]
    load_ms: float
    first_inference_ms: float
    latencies_ms: list[float]
    latency_ms: dict[str, float] | None
    peak_rss_bytes: int | None
    emulated: bool
    arch: str
    threads: int
    report: dict[str, Any] = field(repr=False)


def cache_root() -> Path:
    """Where builds and downloaded wheels are cached: $AUTOGLM_CACHE_DIR or ~/.cache/autoglm."""
    return Path(os.environ.get("AUTOGLM_CACHE_DIR") or Path.home() / ".cache" / "autoglm")


def runner_path(build_dir: Path) -> Path:
    """The runner executable inside a build directory from `build_runtime`."""
    return Path(build_dir) / "bin" / RUNNER


def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NativeRuntimeError(f"{name} not found on PATH: install it with `apt-get install {package}`", "ToolMissing")
    return path


def _check_arch(arch: str) -> None:
    if arch in BUILD_ARCHES and (arch == host_arch() or arch in _CROSS):
        return
    raise NativeRuntimeError(f"cannot build the runtime for {arch!r} on this {host_arch()} machine; "
                             f"choose one of {', '.join(a for a in BUILD_ARCHES if a == host_arch() or a in _CROSS)}",
                             "BuildError")


def _tvm_versions() -> tuple[str, str]:
    return importlib.metadata.version("apache-tvm"), importlib.metadata.version("apache-tvm-ffi")


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise NativeRuntimeError(f"Python package {module} is not installed: run `bash dev.sh test` to set up", "ToolMissing")
    return Path(spec.origin).parent


def _source_hash(arch: str, compiler: str, source_dir: Path = SOURCE_DIR) -> str:
    """Hash of everything that changes the build: sources, TVM versions, compiler."""
    h = hashlib.sha256()
    for path in sorted(source_dir.rglob("*")):
        if path.is_file() and path.suffix != ".md" and "__pycache__" not in path.parts:
            h.update(path.relative_to(source_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(f"{arch}\0{_tvm_versions()}\0".encode())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    h.update("".join(version).encode())
    return h.hexdigest()[:16]


def _run_steps(steps: list[list[str]], what: str) -> None:
    """Run build commands in order; the first that fails raises with the tail of its output."""
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise NativeRuntimeError(f"building {what} failed at `{' '.join(step[:3])}`:\n{tail}", "BuildError")


def _publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished temporary directory into place; if another process won the race, keep theirs."""
    try:
        tmp.rename(final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _built_recipe(libs: Path) -> str | None:
    """The recipe stamped in a finished directory of built TVM libraries, or None."""
    try:
        if all((libs / name).is_file() for name in TVM_LIBS):
            return json.loads((libs / _STAMP).read_text()).get("recipe")
    except (OSError, ValueError, AttributeError):
        pass  # no stamp or a damaged one: not finished
    return None


def _built_tvm_libs(arch: str, *, jobs: int = BUILD_JOBS) -> Path:
    """Directory with libtvm_ffi.so and libtvm_runtime.so for `arch`, built from the installed wheels' sources.

    For architectures with no TVM wheel (armv7). Built once into a temporary sibling and renamed into
    place; the stamp inside names the recipe (runtime_cpp/tvm_from_wheel, TVM versions, compiler), and
    a directory left by another recipe is rebuilt.
    """
    cross = _CROSS[arch]
    compiler = _require_tool(cross.compiler, cross.compiler_package)
    _require_tool("cmake", "cmake")
    tvm_version, ffi_version = _tvm_versions()
    libs = cache_root() / "tvm-libs" / f"{arch}-tvm{tvm_version}-ffi{ffi_version}"
    recipe = _source_hash(arch, compiler, TVM_FROM_WHEEL_DIR)
    if _built_recipe(libs) == recipe:
        return libs
    tvm_dir, ffi_dir = _package_dir("tvm"), _package_dir("tvm_ffi")
    for needed in (ffi_dir / "src" / "ffi", tvm_dir / "src" / "runtime"):
        if not needed.is_dir():
            raise NativeRuntimeError(f"{needed} is missing: the installed apache-tvm / apache-tvm-ffi wheels ship no C++ "
                                     f"sources, so the {arch} TVM runtime cannot be built from them", "BuildError")
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{libs.name}.partial-", dir=libs.parent))
    try:
        cmake_build = tmp / "cmake-build"
        _run_steps([
            ["cmake", "-S", str(TVM_FROM_WHEEL_DIR), "-B", str(cmake_build), "-DCMAKE_BUILD_TYPE=Release",
             f"-DCMAKE_TOOLCHAIN_FILE={SOURCE_DIR / 'cmake' / cross.toolchain_file}", f"-DCMAKE_CXX_COMPILER={compiler}",
             f"-DTVM_FFI_PACKAGE_DIR={ffi_dir}", f"-DTVM_PACKAGE_DIR={tvm_dir}"],
            ["cmake", "--build", str(cmake_build), "-j", str(jobs)],
        ], f"the {arch} TVM runtime from the wheels' sources")
        for name in TVM_LIBS:
            shutil.copy2(cmake_build / "lib" / name, tmp / name)
        shutil.rmtree(cmake_build)
        (tmp / _STAMP).write_text(json.dumps({"arch": arch, "recipe": recipe, "compiler": compiler,
                                              "tvm": [tvm_version, ffi_version]}) + "\n")
        os.chmod(tmp, 0o755)
        if libs.exists() and _built_recipe(libs) != recipe:
            # Another recipe's (or an unfinished) directory: move it aside so the rename below can land.
            # One with this recipe was published by a concurrent build: _publish_dir keeps it.
            stale = Path(tempfile.mkdtemp(prefix=f".{libs.name}.stale-", dir=libs.parent))
            try:
                libs.rename(stale / "libs")
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(stale, ignore_errors=True)
        _publish_dir(tmp, libs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return libs


def _cross_tvm_libs(arch: str, *, jobs: int = BUILD_JOBS) -> Path:
    """Directory with the TVM runtime libraries for `arch`: from the PyPI wheels, or built from source (cached)."""
    cross = _CROSS[arch]
    if cross.wheel_platform is None:
        return _built_tvm_libs(arch, jobs=jobs)
    tvm_version, ffi_version = _tvm_versions()
    libs = cache_root() / "tvm-libs" / f"{arch}-tvm{tvm_version}-ffi{ffi_version}"
    if all((libs / name).is_file() for name in TVM_LIBS):
        return libs
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", cross.wheel_platform,
           "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", "--implementation", "cp",
           f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}", "-d", str(wheels), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NativeRuntimeError(
            f"could not download the {arch} wheels of apache-tvm {tvm_version} and apache-tvm-ffi {ffi_version} "
            f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'pip failed'}); with no network, "
            f"put them in {wheels} (pip download --platform {cross.wheel_platform} ...)", "BuildError")
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{libs.name}.partial-", dir=libs.parent))
    try:
        wanted = set(TVM_LIBS) | set(TVM_OPTIONAL_LIBS)
        for wheel in sorted(wheels.glob(f"*{arch}*.whl")):
            if not wheel.name.startswith((f"apache_tvm-{tvm_version}-", f"apache_tvm_ffi-{ffi_version}-")):
                continue
            with zipfile.ZipFile(wheel) as z:
                for member in z.namelist():
                    base = member.rsplit("/", 1)[-1]
                    if base in wanted and member.count("/") == 2 and member.split("/")[1] == "lib":
                        (tmp / base).write_bytes(z.read(member))
        missing = [n for n in TVM_LIBS if not (tmp / n).is_file()]
        if missing:
            raise NativeRuntimeError(f"the {arch} wheels in {wheels} lack {', '.join(missing)}; delete them and retry",
                                     "BuildError")
        _publish_dir(tmp, libs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return libs


def build_runtime(arch: str | None = None, build_dir: Path | None = None, *, jobs: int = BUILD_JOBS) -> Path:
    """Build runtime_cpp for `arch` ("x86_64", "aarch64" or "arm"; default: this machine's) and return its directory.

    The default directory is `<cache>/runtime/<arch>-<hash of sources>`; a finished build there is reused.
    The build runs in a temporary sibling that is renamed into place only when it succeeded. For arm the
    first build also compiles the TVM runtime libraries (cached apart, see `_built_tvm_libs`).
    """
    arch = arch or host_arch()
    _check_arch(arch)
    _require_tool("cmake", "cmake")
    cross = _CROSS.get(arch) if arch != host_arch() else None
    compiler = _require_tool(cross.compiler, cross.compiler_package) if cross else _require_tool("g++", "g++")
    final = Path(build_dir) if build_dir is not None else cache_root() / "runtime" / f"{arch}-{_source_hash(arch, compiler)}"
    if (final / _STAMP).is_file() and runner_path(final).is_file():
        return final
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise NativeRuntimeError(f"{final} exists and is not a finished runtime build: remove it or choose another "
                                 f"build directory", "BuildError")

    ffi_dir = _package_dir("tvm_ffi")
    if cross:
        lib_dir = _cross_tvm_libs(arch, jobs=jobs)
        runtime_lib, ffi_lib = lib_dir / "libtvm_runtime.so", lib_dir / "libtvm_ffi.so"
        cuda_lib = lib_dir / "libtvm_runtime_cuda.so"
    else:
        tvm_lib_dir = _package_dir("tvm") / "lib"
        runtime_lib, ffi_lib, cuda_lib = tvm_lib_dir / "libtvm_runtime.so", ffi_dir / "lib" / "libtvm_ffi.so", tvm_lib_dir / "libtvm_runtime_cuda.so"

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        cmake_build = tmp / "cmake-build"
        configure = ["cmake", "-S", str(SOURCE_DIR), "-B", str(cmake_build), "-DCMAKE_BUILD_TYPE=Release",
                     f"-DCMAKE_CXX_COMPILER={compiler}", f"-DTVM_FFI_INCLUDE_DIR={ffi_dir / 'include'}",
                     f"-DTVM_RUNTIME_LIB={runtime_lib}", f"-DTVM_FFI_LIB={ffi_lib}",
                     f"-DTVM_RUNTIME_CUDA_LIB={cuda_lib if cuda_lib.is_file() else ''}"]
        if cross:
            configure.append(f"-DCMAKE_TOOLCHAIN_FILE={SOURCE_DIR / 'cmake' / cross.toolchain_file}")
        _run_steps([configure, ["cmake", "--build", str(cmake_build), "-j", str(jobs)],
                    ["cmake", "--install", str(cmake_build), "--prefix", str(tmp)]], f"the C++ runtime for {arch}")
        shutil.rmtree(cmake_build)
        (tmp / _STAMP).write_text(json.dumps({"arch": arch, "compiler": compiler, "tvm": _tvm_versions()}) + "\n")
        os.chmod(tmp, 0o755)
        if final.exists() and not any(final.iterdir()):  # an empty directory given as build_dir
            final.rmdir()
        # (a non-empty one is another process's finished build of the same sources: _publish_dir keeps it)
        _publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def emulation_unavailable(arch: str) -> str | None:
    """Why artifacts for `arch` cannot be run under qemu with the C++ runner here, or None when they can."""
    if arch == host_arch():
        return None
    cross = _CROSS.get(arch)
    if cross is None:
        return f"artifacts for {arch} cannot be emulated on this {host_arch()} machine"
    for tool, package in ((cross.emulator, "qemu-user-static"), (cross.compiler, cross.compiler_package), ("cmake", "cmake")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not Path(cross.sysroot, "lib").is_dir():
        return f"{cross.sysroot} is missing (apt-get install {cross.compiler_package})"
    return None


def emulator_name(arch: str) -> str:
    """The qemu user-mode emulator for `arch`, as named in manifests (e.g. qemu-aarch64, qemu-arm)."""
    return _CROSS[arch].emulator.removesuffix("-static") if arch in _CROSS else f"qemu-{arch}"


def emulator_hint(arch: str) -> str:
    """How to run a program built for `arch` here, for messages: e.g. `qemu-arm-static -L /usr/arm-linux-gnueabihf`."""
    cross = _CROSS.get(arch)
    return f"{cross.emulator} -L {cross.sysroot}" if cross else f"qemu-{arch}-static"


def _emulator_command(arch: str) -> list[str]:
    cross = _CROSS[arch]
    qemu = _require_tool(cross.emulator, "qemu-user-static")
    if not Path(cross.sysroot, "lib").is_dir():
        raise NativeRuntimeError(f"{cross.sysroot} (the {arch} C/C++ libraries qemu loads) is missing: "
                                 f"install it with `apt-get install {cross.compiler_package}`", "ToolMissing")
    return [qemu, "-L", cross.sysroot]


def _runner_failure(proc: subprocess.CompletedProcess[str], emulated: bool) -> NativeRuntimeError:
    where = "under qemu " if emulated else ""
    stderr_tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    try:
        error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
        return NativeRuntimeError(error["message"], error["type"])
    except (IndexError, KeyError, TypeError, ValueError):
        pass
    rc = proc.returncode
    if rc < 0 or rc >= 128:
        signum = -rc if rc < 0 else rc - 128
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return NativeRuntimeError(f"autoglm-runner crashed {where}with {name}; this is a bug in the runtime or a "
                                  f"corrupt artifact (rebuild it); stderr:\n{stderr_tail}", "Crash")
    kind = _RUNNER_EXIT.get(rc, "Error")
    return NativeRuntimeError(f"autoglm-runner failed {where}(exit {rc}, {kind}): {stderr_tail}", kind)


def run_artifact(
    artifact_dir: str | Path,
    inputs: dict[str, np.ndarray] | None = None,
    *,
    emulate: bool = False,
    warmup: int = 1,
    repeat: int = 10,
    threads: int | None = None,
    seed: int = 0,
    runtime_dir: Path | None = None,
    timeout: float | None = 600,
    scratch_dir: Path | None = None,
) -> NativeRunResult:
    """Run an artifact with the C++ runner and return its outputs and timings.

    `inputs` maps every input name to an array; None feeds the runner's own random inputs from
    `seed`. Artifacts for this machine's architecture run natively; aarch64 and arm (armv7) artifacts
    need `emulate=True` on an x86_64 machine and run under qemu-aarch64-static / qemu-arm-static.
    `repeat=0` runs once, untimed. `threads` sizes TVM's CPU thread pool (None: TVM's default). `runtime_dir` is a
    build from `build_runtime` for the artifact's architecture
    (default: build or reuse the cached one). The runner verifies checksums and architecture itself.
    `scratch_dir` holds the input/output files of the run (default: the system's temporary directory).
    """
    artifact_dir = Path(artifact_dir)
    arch = read_manifest(artifact_dir)["target"]["arch"]
    if warmup < 0 or repeat < 0 or (threads is not None and threads < 0):
        raise NativeRuntimeError("warmup, repeat and threads must be >= 0", "UsageError")
    emulated = arch != host_arch()
    if emulated and not emulate:
        raise NativeRuntimeError(
            f"artifact {artifact_dir} is for {arch} and this machine is {host_arch()}: pass emulate=True "
            f"(`--emulate`) to run it under qemu, or run it on the board", "ArchMismatchError")
    if emulated and arch not in _CROSS:
        raise NativeRuntimeError(f"artifacts for {arch} cannot be emulated here: the runner is built for "
                                 f"{', '.join(sorted({host_arch(), *_CROSS}))} only", "ArchMismatchError")
    prefix = _emulator_command(arch) if emulated else []
    build = Path(runtime_dir) if runtime_dir is not None else build_runtime(arch)
    runner = runner_path(build)
    if not runner.is_file():
        raise NativeRuntimeError(f"{runner} does not exist: build it with `autoglm runtime build --target {arch}`",
                                 "ToolMissing")

    with tempfile.TemporaryDirectory(prefix="autoglm-native-", dir=scratch_dir) as tmp_name:
        tmp = Path(tmp_name)
        out_dir = tmp / "outputs"
        out_dir.mkdir()
        cmd = [*prefix, str(runner), str(artifact_dir), "--json", "--output-dir", str(out_dir),
               "--warmup", str(warmup), "--repeat", str(repeat)]
        if threads:
            cmd += ["--threads", str(threads)]
        if inputs is None:
            cmd += ["--random", str(seed)]
        else:
            for i, (name, array) in enumerate(inputs.items()):
                path = tmp / f"input{i}.npy"
                np.save(path, np.asarray(array, order="C"), allow_pickle=False)
                cmd += ["--input", f"{name}={path}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NativeRuntimeError(f"autoglm-runner {'under qemu ' if emulated else ''}did not finish in {timeout} s; "
                                     f"lower repeat, or raise timeout", "Timeout") from None
        if proc.returncode != 0:
            raise _runner_failure(proc, emulated)
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            raise NativeRuntimeError(f"autoglm-runner printed no JSON report; stdout: {proc.stdout[-500:]!r}",
                                     "Error") from None
        outputs = {o["name"]: np.load(o["path"], allow_pickle=False) for o in report["outputs"]}
    return NativeRunResult(
        outputs=outputs, load_ms=report["load_ms"], first_inference_ms=report["first_inference_ms"],
        latencies_ms=report["latencies_ms"], latency_ms=report["latency_ms"], peak_rss_bytes=report["peak_rss_bytes"],
        emulated=emulated, arch=arch, threads=report["threads"], report=report,
    )
