"""Target descriptions: one TOML file per device, read and validated here.

This package is data plus a loader; it imports neither `compile` nor `toolkit`
(nor TVM), so listing targets is instant.
"""

from __future__ import annotations

import difflib
import os
import platform
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILTIN_DIR = Path(__file__).resolve().parent
ENV_VAR = "AUTOGLM_TARGETS_DIR"
ARCHES = ("x86_64", "aarch64", "arm")
DEVICES = ("cpu", "cuda")


class TargetError(ValueError):
    """A target name is unknown or a target file is invalid."""


@dataclass(frozen=True)
class Target:
    """One kind of device the toolkit builds for."""

    name: str
    description: str
    arch: str
    device: str
    tvm: dict[str, Any]
    threads: int
    memory_mb: int
    rpc_key: str
    cross_compiler: str | None = None
    cross_compiler_package: str | None = None
    emulator: str | None = None
    emulator_package: str | None = None
    sysroot: str | None = None
    source: str = ""
    features: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_native(self) -> bool:
        """True when artifacts for this target run on this machine without an emulator."""
        return self.arch == host_arch()

    @property
    def host_tvm(self) -> dict[str, Any] | None:
        """The TVM target of the host CPU for GPU targets (None for CPU targets)."""
        return self.tvm.get("host")

    def missing_cpu_features(self) -> list[str]:
        """CPU features this target's code may use that this machine lacks (empty on other architectures).

        An x86-64-avx512 artifact on an AVX2-only host would die of SIGILL, so it does not run here.
        """
        if self.device != "cpu" or self.arch != host_arch():
            return []
        known = set(_X86_FEATURES.values()) | set(_ARM_FEATURES.values())
        have = {"+" + f for f in detect_host()["features"]}
        return sorted(f.lstrip("+") for f in {"+" + f.lstrip("+") for f in self.features} & known - have)

    def toolchain_found(self) -> bool:
        """Whether the compiler this target needs is on PATH."""
        return shutil.which(self.cross_compiler or "g++") is not None

    def runnable_here(self) -> str:
        """How artifacts of this target can run on this machine: native, emulated or no."""
        if self.device == "cuda":
            return "board" if not _has_cuda_driver() else "native"
        if self.is_native:
            return "no" if self.missing_cpu_features() else "native"
        if self.emulator and shutil.which(self.emulator):
            return "emulated"
        return "no"


def host_arch() -> str:
    """The architecture of this machine in the toolkit's naming."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    if machine.startswith("arm"):
        return "arm"
    raise TargetError(f"unsupported host architecture {machine!r}: the toolkit runs on x86_64 and aarch64")


def _has_cuda_driver() -> bool:
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvidiactl"))


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


# /proc/cpuinfo flag -> LLVM feature, for the features that change code generation.
_X86_FEATURES = {
    "sse4_1": "+sse4.1", "sse4_2": "+sse4.2", "avx": "+avx", "avx2": "+avx2", "fma": "+fma",
    "f16c": "+f16c", "avx512f": "+avx512f", "avx512bw": "+avx512bw", "avx512dq": "+avx512dq",
    "avx512vl": "+avx512vl", "avx512_vnni": "+avx512vnni", "avx_vnni": "+avxvnni",
}
_ARM_FEATURES = {"asimd": "+neon", "asimddp": "+dotprod", "asimdhp": "+fullfp16", "i8mm": "+i8mm", "sve": "+sve"}


def detect_host() -> dict[str, Any]:
    """The TVM target dict (and feature list) of the running machine."""
    arch = host_arch()
    flags = _cpu_flags()
    if arch == "x86_64":
        mattr = sorted({v for k, v in _X86_FEATURES.items() if k in flags})
        tvm = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mattr": mattr}
    elif arch == "aarch64":
        mattr = sorted({v for k, v in _ARM_FEATURES.items() if k in flags} | {"+neon"})
        tvm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": mattr}
    else:
        mattr = ["+neon"] if "neon" in flags else []
        tvm = {"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mattr": mattr, "mfloat-abi": "hard"}
    return {"arch": arch, "tvm": tvm, "features": tuple(f.lstrip("+") for f in mattr)}


_REQUIRED = {"name": str, "description": str, "arch": str, "device": str, "tvm": dict, "rpc_key": str}
_OPTIONAL = {
    "threads": int, "memory_mb": int, "cross_compiler": str, "cross_compiler_package": str,
    "emulator": str, "emulator_package": str, "sysroot": str, "detect": bool,
}


_TVM_STRINGS = ("kind", "mtriple", "mcpu", "mfloat-abi", "mabi", "arch", "tag")


def _check_tvm(tvm: dict[str, Any], where: str, table: str) -> None:
    """Types of the TVM target dict's fields this toolkit and TVM read (a wrong type would crash TVM later)."""
    for key in _TVM_STRINGS:
        if key in tvm and not isinstance(tvm[key], str):
            raise TargetError(f"{where}: [{table}] '{key}' must be a string, got {type(tvm[key]).__name__}")
    if "mattr" in tvm:
        mattr = tvm["mattr"]
        if not isinstance(mattr, list) or not all(isinstance(a, str) and len(a) > 1 and a[0] in "+-" for a in mattr):
            raise TargetError(f"{where}: [{table}] 'mattr' must be a list of features like [\"+neon\", \"+dotprod\"], "
                              f"got {mattr!r}")
    if "keys" in tvm and not (isinstance(tvm["keys"], list) and all(isinstance(k, str) for k in tvm["keys"])):
        raise TargetError(f"{where}: [{table}] 'keys' must be a list of strings")
    if "host" in tvm:
        if not isinstance(tvm["host"], dict):
            raise TargetError(f"{where}: [{table}.host] must be a table")
        _check_tvm(tvm["host"], where, f"{table}.host")


def _validate(data: dict[str, Any], source: Path) -> Target:
    where = f"target file {source}"
    if data.get("detect"):
        detected = detect_host()
        data = {**data, "arch": detected["arch"], "tvm": detected["tvm"]}
        data.setdefault("threads", os.cpu_count() or 1)
        data.setdefault("memory_mb", _host_memory_mb())
    def wrong_type(key: str, typ: type) -> bool:  # TOML's true is a Python int too: not a thread count
        return not isinstance(data[key], typ) or (typ is int and isinstance(data[key], bool))

    kinds = {int: "an integer", str: "a string", dict: "a table", bool: "true or false"}

    for key, typ in _REQUIRED.items():
        if key not in data:
            raise TargetError(f"{where}: missing required key '{key}'")
        if wrong_type(key, typ):
            raise TargetError(f"{where}: '{key}' must be {kinds[typ]}, got {data[key]!r:.60}")
    for key, typ in _OPTIONAL.items():
        if key in data and wrong_type(key, typ):
            raise TargetError(f"{where}: '{key}' must be {kinds[typ]}, got {data[key]!r:.60}")
    unknown = set(data) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise TargetError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted({*_REQUIRED, *_OPTIONAL})}")
    if data["arch"] not in ARCHES:
        raise TargetError(f"{where}: arch must be one of {', '.join(ARCHES)}, got {data['arch']!r}")
    if data["device"] not in DEVICES:
        raise TargetError(f"{where}: device must be one of {', '.join(DEVICES)}, got {data['device']!r}")
    tvm = data["tvm"]
    if "kind" not in tvm:
        raise TargetError(f"{where}: [tvm] needs 'kind' (llvm or cuda)")
    _check_tvm(tvm, where, "tvm")
    if data["device"] == "cuda" and (tvm["kind"] != "cuda" or not isinstance(tvm.get("host"), dict)):
        raise TargetError(f"{where}: a cuda device needs [tvm] kind = \"cuda\" and a [tvm.host] table")
    if data["device"] == "cpu" and tvm["kind"] != "llvm":
        raise TargetError(f"{where}: a cpu device needs [tvm] kind = \"llvm\"")
    if data["arch"] != host_arch() and not data.get("cross_compiler"):
        raise TargetError(f"{where}: arch {data['arch']} differs from this machine's; set 'cross_compiler'")
    threads = data.get("threads", 1)
    if not 1 <= threads <= 4096:
        raise TargetError(f"{where}: threads must be from 1 to 4096, got {threads}")
    if data.get("memory_mb", 0) < 0:
        raise TargetError(f"{where}: memory_mb must be >= 0, got {data['memory_mb']}")
    return Target(
        name=data["name"], description=data["description"], arch=data["arch"], device=data["device"],
        tvm=tvm, threads=threads, memory_mb=data.get("memory_mb", 0), rpc_key=data["rpc_key"],
        cross_compiler=data.get("cross_compiler"), cross_compiler_package=data.get("cross_compiler_package"),
        emulator=data.get("emulator"), emulator_package=data.get("emulator_package"),
        sysroot=data.get("sysroot"), source=str(source),
        features=detect_host()["features"] if data.get("detect") else tuple(
            str(a).lstrip("+") for a in (tvm.get("host", tvm).get("mattr", []))),
    )


def _host_memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def search_dirs(extra: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for target files, later ones overriding earlier ones."""
    dirs = [BUILTIN_DIR]
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry))
    if extra:
        dirs.append(Path(extra))
    for d in dirs[1:]:
        if not d.is_dir():
            raise TargetError(f"targets directory {d} does not exist: pass an existing directory to --targets-dir or {ENV_VAR}")
    return dirs


def _files(extra: str | os.PathLike | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in search_dirs(extra):
        for path in sorted(d.glob("*.toml")):
            found[path.stem] = path
    return found


def load_file(path: Path) -> Target:
    """Read and validate one target file."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TargetError(f"target file {path} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise TargetError(f"cannot read target file {path}: {exc.strerror}") from None
    target = _validate(data, path)
    if target.name != path.stem:
        raise TargetError(f"target file {path}: name {target.name!r} must match the file name {path.stem!r}")
    return target


def list_targets(targets_dir: str | os.PathLike | None = None) -> list[Target]:
    """All known targets, built-in and user-supplied, sorted by name."""
    return [load_file(p) for _, p in sorted(_files(targets_dir).items())]


def load_target(name: str, targets_dir: str | os.PathLike | None = None) -> Target:
    """The target called `name`; an unknown name lists the closest known ones."""
    files = _files(targets_dir)
    if name not in files:
        same_case = [k for k in files if k.lower() == name.lower()]  # RPI4 -> rpi4
        close = same_case or difflib.get_close_matches(name.lower(), list(files), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known targets: {', '.join(sorted(files))}"
        raise TargetError(f"unknown target {name!r}: {hint} (`autoglm targets` lists them all)")
    return load_file(files[name])
