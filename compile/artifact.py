"""The artifact directory: how it is written (atomically) and how it is checked before anything in it is opened.

An artifact from elsewhere is untrusted input. This module is the one place that decides whether
a directory is an artifact the toolkit may load; `inspect`, `run`, `bench`, the Python runtime and
the C++ runner's glue all go through it, and runtime_cpp/src/runtime.cc makes the same checks:

- `manifest.json` is covered by `manifest.json.sha256` (its sha256, `sha256sum` format) and must
  be a manifest this toolkit writes: every field it reads is present and of the right type
  (`validate_manifest`), JSON with no duplicate keys, at most 16 MiB;
- every path it names (`library`, the keys of `files`) is relative, has no `..`, `.` or empty
  parts, and resolves inside the directory through no symbolic link; each is a regular file whose
  sha256 matches; the directory itself may be reached through a link;
- the library is an ELF shared object whose machine (read from its header, not the manifest) is
  the manifest's architecture and, when loading, this machine's;
- the bytes loaded are the bytes checked: the library is opened once, hashed through that
  descriptor, and loaded from it (`/proc/self/fd`), so a file swapped in after the check is never
  loaded.

The checksums detect corruption and edits; they are not a signature. A library is code: loading
an artifact runs it. Load only artifacts you built or got from someone you trust.

Writing (`staging_dir`, `publish`): a compile builds in `.NAME.partial-*` beside the output and
publishes with one atomic exchange (`renameat2(RENAME_EXCHANGE)`) under a lock on the parent
directory, so readers see the old artifact or the new one, whole. An existing output is replaced
only when it is an artifact of this toolkit holding nothing but its own files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ArtifactError, UsageError
from .fileio import write_atomic
from .frontend import sha256_file

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # artifacts `-o` may replace (format 1 predates the manifest digest)
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.json.sha256"
LIBRARY = "model.so"
SOURCE_TFLITE = "source.tflite"  # a TFLite model's own file, shipped so any device's run can be checked

ARCHES = ("x86_64", "aarch64", "arm")
DEVICES = ("cpu", "cuda")
DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "bfloat16",
          "float32", "float64")
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILES = 10_000
MAX_PATH_CHARS = 1024
NAME_MAX = 255

# ELF e_machine -> (arch, ELF class): x86_64 and aarch64 are 64-bit, arm (armv7) 32-bit.
_ELF_MACHINES = {0x3E: ("x86_64", 2), 0xB7: ("aarch64", 2), 0x28: ("arm", 1)}
_ET_DYN = 3
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REBUILD = "rebuild it with `autoglm compile`"


# ---- paths inside an artifact -------------------------------------------------------------------------

def member_path_problem(rel: Any) -> str | None:
    """Why `rel` is not an acceptable path of a file inside an artifact, or None when it is."""
    if not isinstance(rel, str) or not rel:
        return "is not a non-empty string"
    if len(rel) > MAX_PATH_CHARS:
        return f"is longer than {MAX_PATH_CHARS} characters"
    if rel.startswith("/"):
        return "is an absolute path"
    if "\\" in rel or any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel):
        return "holds a backslash or a control character"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, '.' or '..' part (paths must stay inside the artifact)"
    if any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in parts):
        return f"has a part longer than {NAME_MAX} bytes"
    return None


class _Vanished(Exception):
    """A file of the artifact is gone: maybe the artifact was replaced while it was read (then it is read again)."""

    def __init__(self, rel: str, message: str | None = None):
        super().__init__(rel)
        self.rel = rel
        self.message = message


def _open_member(dir_fd: int, rel: str, artifact: Path) -> int:
    """An O_RDONLY descriptor of regular file `rel` inside the directory `dir_fd`, reached through no link."""
    problem = member_path_problem(rel)
    if problem:
        raise ArtifactError(f"artifact {artifact}: {MANIFEST} names the file {rel!r}, which {problem}; refusing to load it")
    parts = rel.split("/")
    fds: list[int] = []
    cur = dir_fd
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                st = os.stat(part, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                raise _Vanished(rel) from None
            except NotADirectoryError:
                raise ArtifactError(f"artifact {artifact}: {'/'.join(parts[:i])} is not a directory; {_REBUILD}") from None
            except OSError as exc:
                raise ArtifactError(f"artifact {artifact}: cannot read {rel} ({exc.strerror})") from None
            here = "/".join(parts[: i + 1])
            if stat.S_ISLNK(st.st_mode):
                try:
                    dest = os.readlink(part, dir_fd=cur)
                except OSError:
                    dest = "?"
                raise ArtifactError(f"artifact {artifact}: {here} is a symbolic link (to {dest}); an artifact may not "
                                    f"contain links, so it is not loaded: copy the real files in, or {_REBUILD}")
            want = stat.S_ISREG if last else stat.S_ISDIR
            if not want(st.st_mode):
                kind = "a regular file" if last else "a directory"
                raise ArtifactError(f"artifact {artifact}: {here} is not {kind}; {_REBUILD}")
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | (0 if last else os.O_DIRECTORY)
            try:
                fd = os.open(part, flags, dir_fd=cur)
            except FileNotFoundError:
                raise _Vanished(rel) from None
            except OSError as exc:
                raise ArtifactError(f"artifact {artifact}: cannot open {here} ({exc.strerror})") from None
            fds.append(fd)
            cur = fd
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):  # swapped between the stat and the open
                raise _Vanished(rel)
        return fds.pop()
    finally:
        for fd in fds:
            os.close(fd)


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- ELF --------------------------------------------------------------------------------------------

def _elf_arch(head: bytes, what: str) -> str:
    """The toolkit's architecture name of an ELF shared library, from the first 20 bytes of its header."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ArtifactError(f"{what} is not an ELF shared library")
    order = "little" if head[5] == 1 else "big"
    code = int.from_bytes(head[18:20], order)
    e_type = int.from_bytes(head[16:18], order)
    arch, elf_class = _ELF_MACHINES.get(code, (f"elf-machine-{code:#x}", head[4]))
    if head[4] != elf_class or head[5] != 1:
        raise ArtifactError(f"{what} is a {'32' if head[4] == 1 else '64'}-bit {'little' if head[5] == 1 else 'big'}-endian "
                            f"ELF file for {arch}, which no target of this toolkit produces")
    if e_type != _ET_DYN:
        raise ArtifactError(f"{what} is an ELF file but not a shared library (type {e_type})")
    return arch


def elf_machine(path: str | Path) -> str:
    """Architecture of an ELF shared library (x86_64, aarch64, arm), read from its header."""
    with open(path, "rb") as f:
        head = f.read(20)
    return _elf_arch(head, str(path))


# ---- the manifest -----------------------------------------------------------------------------------

class _Field:
    """Validation helpers: each raises ArtifactError naming the field and what it must be."""

    def __init__(self, artifact: Path):
        self.artifact = artifact

    def fail(self, name: str, must: str, value: Any) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ArtifactError(f"artifact {self.artifact}: {MANIFEST} field '{name}' must be {must} (got {shown}); "
                            f"the manifest is not one this toolkit wrote: {_REBUILD}")

    def get(self, parent: dict, key: str, name: str, check: Callable[[Any], bool], must: str, optional: bool = False) -> Any:
        if key not in parent:
            if optional:
                return None
            raise ArtifactError(f"artifact {self.artifact}: {MANIFEST} lacks the field '{name}'; the manifest is not "
                                f"one this toolkit wrote: {_REBUILD}")
        value = parent[key]
        if not check(value):
            self.fail(name, must, value)
        return value

    def obj(self, parent: dict, key: str, name: str, optional: bool = False) -> dict | None:
        return self.get(parent, key, name, lambda v: isinstance(v, dict), "an object", optional)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _is_opt_num(v: Any) -> bool:
    return v is None or _is_num(v)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _tensor_list(f: _Field, m: dict, key: str) -> list[dict]:
    items = f.get(m, key, key, lambda v: isinstance(v, list), "a list of tensors")
    names = set()
    for i, t in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            f.fail(where, "an object with name, shape and dtype", t)
        name = f.get(t, "name", f"{where}.name", lambda v: isinstance(v, str) and 0 < len(v) <= 256, "a non-empty string")
        if name in names:
            f.fail(f"{where}.name", "unique", name)
        names.add(name)
        f.get(t, "shape", f"{where}.shape", lambda v: isinstance(v, list) and len(v) <= 32 and
              all(_is_int(d) and 0 <= d < 2**31 for d in v), "a list of at most 32 non-negative integers")
        f.get(t, "dtype", f"{where}.dtype", lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}")
    return items


def validate_manifest(m: Any, artifact: Path) -> dict[str, Any]:
    """Check every field a reader of the artifact uses; raises ArtifactError naming the first bad one."""
    f = _Field(artifact)
    if not isinstance(m, dict):
        f.fail("(top level)", "an object", m)
    version = m.get("format_version")
    if version != FORMAT_VERSION:
        hint = "rebuild it" if _is_int(version) and version < FORMAT_VERSION else "use the toolkit that built it, or rebuild it"
        raise ArtifactError(f"artifact {artifact} has artifact format {version!r}; this toolkit reads format "
                            f"{FORMAT_VERSION}: {hint}")
    library = f.get(m, "library", "library", _is_str, "a string")
    problem = member_path_problem(library)
    if problem:
        raise ArtifactError(f"artifact {artifact}: {MANIFEST} names {library!r} as its library, a path that {problem}; "
                            f"an artifact may only refer to files inside its directory, so it is not loaded")
    files = f.obj(m, "files", "files")
    if len(files) > MAX_FILES:
        f.fail("files", f"at most {MAX_FILES} entries", f"{len(files)} entries")
    for rel, digest in files.items():
        problem = member_path_problem(rel)
        if problem:
            raise ArtifactError(f"artifact {artifact}: {MANIFEST} lists the file {rel!r}, a path that {problem}; an "
                                f"artifact may only refer to files inside its directory, so it is not loaded")
        if rel in (MANIFEST, MANIFEST_DIGEST):
            f.fail(f"files.{rel}", "absent (the manifest is covered by its own digest)", digest)
        if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
            f.fail(f"files.{rel}", "a sha256 (64 lowercase hex digits)", digest)
    if library not in files:
        raise ArtifactError(f"artifact {artifact}: {MANIFEST} lists no checksum for its library {library}; refusing to "
                            f"load an unverified library: {_REBUILD}")
    f.get(m, "created_utc", "created_utc", _is_str, "a string")
    f.get(m, "tvm_version", "tvm_version", _is_str, "a string")
    model = f.obj(m, "model", "model")
    f.get(model, "name", "model.name", _is_str, "a string")
    f.get(model, "format", "model.format", lambda v: v in ("onnx", "tflite"), "onnx or tflite")
    f.get(model, "source_file", "model.source_file", _is_str, "a string")
    f.get(model, "sha256", "model.sha256", lambda v: isinstance(v, str) and _HEX64.fullmatch(v) is not None,
          "a sha256 (64 lowercase hex digits)")
    target = f.obj(m, "target", "target")
    f.get(target, "name", "target.name", _is_str, "a string")
    f.get(target, "description", "target.description", _is_str, "a string", optional=True)
    f.get(target, "arch", "target.arch", lambda v: v in ARCHES, f"one of {', '.join(ARCHES)}")
    f.get(target, "device", "target.device", lambda v: v in DEVICES, f"one of {', '.join(DEVICES)}")
    f.obj(target, "tvm_target", "target.tvm_target")
    f.get(target, "threads", "target.threads", lambda v: _is_int(v) and 1 <= v <= 4096, "an integer from 1 to 4096")
    f.get(target, "rpc_key", "target.rpc_key", _is_str, "a string")
    toolchain = f.obj(m, "toolchain", "toolchain")
    f.get(toolchain, "compiler", "toolchain.compiler", _is_str, "a string")
    f.get(toolchain, "version", "toolchain.version", _is_str, "a string")
    inputs = _tensor_list(f, m, "inputs")
    _tensor_list(f, m, "outputs")
    precision = f.obj(m, "precision", "precision")
    f.get(precision, "mode", "precision.mode", lambda v: v in ("fp32", "int8"), "fp32 or int8")
    quantized = f.get(precision, "quantized_model", "precision.quantized_model", _is_opt_str, "a string or null",
                      optional=True)
    if quantized is not None and (member_path_problem(quantized) or quantized not in files):
        f.fail("precision.quantized_model", "a file of the artifact listed in files", quantized)
    tuning = f.obj(m, "tuning", "tuning")
    f.get(tuning, "database", "tuning.database", _is_opt_str, "a string or null")
    f.get(tuning, "records_applied", "tuning.records_applied", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
    fusion = f.obj(m, "fusion", "fusion")
    for key in ("graph_ops", "kernels", "launches"):
        f.get(fusion, key, f"fusion.{key}", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
    f.get(fusion, "kernel_names", "fusion.kernel_names", _is_str_list, "a list of strings")
    f.get(fusion, "patterns", "fusion.patterns", lambda v: isinstance(v, dict) and all(_is_int(n) for n in v.values()),
          "an object of counts", optional=True)
    rows = f.get(fusion, "kernel_table", "fusion.kernel_table", lambda v: isinstance(v, list), "a list", optional=True)
    for i, row in enumerate(rows or []):
        where = f"fusion.kernel_table[{i}]"
        if not isinstance(row, dict):
            f.fail(where, "an object", row)
        for key in ("name", "pattern", "schedule"):
            f.get(row, key, f"{where}.{key}", _is_str, "a string")
        f.get(row, "flops", f"{where}.flops", _is_opt_num, "a number or null")
        f.get(row, "bytes", f"{where}.bytes", _is_num, "a number")
        f.get(row, "launches", f"{where}.launches", _is_int, "an integer")
        f.get(row, "time_us", f"{where}.time_us", _is_opt_num, "a number or null")
    memory = f.obj(m, "memory", "memory")
    for key in ("planned_activation_bytes", "weight_bytes"):
        f.get(memory, key, f"memory.{key}", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
    lineage = f.get(m, "lineage", "lineage", lambda x: isinstance(x, dict), "an object", optional=True)
    if lineage is not None:
        f.get(lineage, "validation_accuracy", "lineage.validation_accuracy",
              lambda x: x is None or (_is_num(x) and 0 <= x <= 1), "a number from 0 to 1 or null", optional=True)
    v = f.obj(m, "verification", "verification")
    passed = f.get(v, "passed", "verification.passed", lambda x: x is None or isinstance(x, bool), "true, false or null")
    if passed is None:
        f.get(v, "skipped", "verification.skipped", _is_str, "a string saying why")
    else:
        f.get(v, "reference", "verification.reference", _is_str, "a string")
        f.get(v, "reference_version", "verification.reference_version", _is_str, "a string")
        f.get(v, "max_abs_error", "verification.max_abs_error", _is_num, "a number")
        f.get(v, "max_rel_error", "verification.max_rel_error", _is_num, "a number")
        f.get(v, "how", "verification.how", _is_str, "a string", optional=True)
    f.get(m, "notes", "notes", _is_str_list, "a list of strings")
    f.get(m, "compile_seconds", "compile_seconds", lambda x: isinstance(x, dict) and all(_is_num(s) for s in x.values()),
          "an object of seconds", optional=True)
    bounds = f.get(m, "index_bounds", "index_bounds", lambda x: isinstance(x, dict), "an object", optional=True) or {}
    integer_inputs = {t["name"] for t in inputs if t["dtype"].startswith(("int", "uint"))}
    for name, pair in bounds.items():
        if name not in integer_inputs:
            f.fail(f"index_bounds.{name}", "the name of an integer input", name)
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_int(b) and -2**63 <= b < 2**63 for b in pair)
                and pair[0] <= pair[1]):
            f.fail(f"index_bounds.{name}", "[lo, hi], two integers with lo <= hi", pair)
    return m


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_manifest_bytes(data: bytes, artifact: Path) -> dict[str, Any]:
    """JSON of a manifest (UTF-8, no duplicate keys), validated; ArtifactError in one line otherwise."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"artifact {artifact}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; {_REBUILD}")
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ArtifactError(f"artifact {artifact}: {MANIFEST} is corrupt ({why}); {_REBUILD}") from None
    return validate_manifest(manifest, artifact)


# ---- reading an artifact ----------------------------------------------------------------------------

def _open_dir(artifact: Path) -> int:
    try:
        return os.open(artifact, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"artifact {artifact} does not exist; build one with `autoglm compile MODEL -o {artifact}`") from None
    except NotADirectoryError:
        raise ArtifactError(f"{artifact} is not an artifact directory (it is a file); build one with `autoglm compile`") from None
    except OSError as exc:
        raise ArtifactError(f"cannot open the artifact {artifact}: {exc.strerror}") from None


def _read_fd(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def _read_manifest_at(dir_fd: int, artifact: Path) -> tuple[dict[str, Any], str]:
    """The validated manifest of the directory `dir_fd` and its sha256."""
    try:
        fd = _open_member(dir_fd, MANIFEST, artifact)
    except _Vanished:
        raise _Vanished(MANIFEST, f"{artifact} is not an artifact directory (no {MANIFEST}); build one with "
                                  f"`autoglm compile`") from None
    try:
        data = _read_fd(fd, MAX_MANIFEST_BYTES)
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"artifact {artifact}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; {_REBUILD}")
    digest = sha256_bytes(data)
    try:
        dfd = _open_member(dir_fd, MANIFEST_DIGEST, artifact)
    except _Vanished:
        raise _Vanished(MANIFEST_DIGEST, f"artifact {artifact} has no {MANIFEST_DIGEST} (the sha256 of its manifest): it "
                                         f"is incomplete or was built by an older toolkit; {_REBUILD}") from None
    try:
        side = _read_fd(dfd, 4096)
    finally:
        os.close(dfd)
    m = re.fullmatch(rb"([0-9a-f]{64})  manifest\.json\n?", side)
    if m is None:
        raise ArtifactError(f"artifact {artifact}: {MANIFEST_DIGEST} is not '<sha256>  {MANIFEST}'; {_REBUILD}")
    if m.group(1).decode() != digest:
        raise ArtifactError(f"artifact {artifact}: {MANIFEST} does not match its checksum in {MANIFEST_DIGEST} (modified "
                            f"or corrupt); {_REBUILD}")
    return parse_manifest_bytes(data, artifact), digest


def _same_dir(artifact: Path, dir_fd: int) -> bool:
    try:
        a, b = os.stat(artifact), os.fstat(dir_fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _with_retries(artifact: Path, body: Callable[[int], Any]) -> Any:
    """Run `body(dir_fd)`; if a listed file vanished because the artifact was replaced meanwhile, read the new one."""
    for _attempt in range(5):
        dir_fd = _open_dir(artifact)
        try:
            return body(dir_fd)
        except _Vanished as gone:
            if _same_dir(artifact, dir_fd):
                raise ArtifactError(gone.message or f"artifact {artifact} is incomplete: {gone.rel} is listed in "
                                                    f"{MANIFEST} but missing; {_REBUILD}") from None
        finally:
            os.close(dir_fd)
    raise ArtifactError(f"artifact {artifact} kept changing while it was read (is something rewriting it in a loop?)")


def read_manifest(artifact: str | Path) -> dict[str, Any]:
    """The manifest of an artifact directory, checked against its digest and validated (files not hashed)."""
    artifact = Path(artifact)
    return _with_retries(artifact, lambda dir_fd: _read_manifest_at(dir_fd, artifact)[0])


@dataclass
class VerifiedArtifact:
    """An artifact whose manifest and files were checked; `library_fd` is the checked library, still open."""

    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    library_arch: str
    library_fd: int

    def close(self) -> None:
        if self.library_fd >= 0:
            os.close(self.library_fd)
            self.library_fd = -1

    def __enter__(self) -> "VerifiedArtifact":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load_library(self):
        """Load the checked library into TVM from its open descriptor (never by a path someone could swap)."""
        import tvm  # noqa: F401 - registers the Relax VM executable loader with tvm_ffi
        import tvm_ffi

        library = self.manifest["library"]
        proc = f"/proc/self/fd/{self.library_fd}"
        # TVM picks the loader by the file's suffix, and dlopen caches by name: a fresh, uniquely named
        # link to the descriptor gives both what they need and loads exactly the bytes that were checked.
        with tempfile.TemporaryDirectory(prefix="autoglm-load-") as tmp:
            link = os.path.join(tmp, "model.so")
            if os.path.exists(proc):
                os.symlink(proc, link)
                target = link
            else:  # no /proc: load by path (checked a moment ago)
                target = str(self.path / library)
            try:
                return tvm_ffi.load_module(target)
            except Exception as exc:  # noqa: BLE001 - the loader's error, made one line
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
                raise ArtifactError(f"cannot load {self.path / library}: {lines[-1].strip()[:300]}") from None


def _verify_at(dir_fd: int, artifact: Path, for_arch: str | None) -> VerifiedArtifact:
    manifest, digest = _read_manifest_at(dir_fd, artifact)
    library = manifest["library"]
    lib_fd = -1
    try:
        for rel, expected in manifest["files"].items():
            fd = _open_member(dir_fd, rel, artifact)
            try:
                actual = _sha256_fd(fd)
            except OSError as exc:
                os.close(fd)
                raise ArtifactError(f"artifact {artifact}: cannot read {rel} ({exc.strerror})") from None
            if actual != expected:
                os.close(fd)
                raise ArtifactError(f"artifact {artifact}: {rel} does not match its checksum in the manifest (modified or "
                                    f"corrupt); {_REBUILD}")
            if rel == library:
                lib_fd = fd
            else:
                os.close(fd)
        head = os.pread(lib_fd, 20, 0)
        lib_arch = _elf_arch(head, f"{artifact}/{library}")
        declared = manifest["target"]["arch"]
        if lib_arch != declared:
            raise ArtifactError(f"artifact {artifact}: its library is an {lib_arch} ELF file but {MANIFEST} says {declared}; "
                                f"the manifest does not describe this library: {_REBUILD}")
        if for_arch is not None and lib_arch != for_arch:
            raise ArtifactError(
                f"{artifact} was built for {lib_arch} (target {manifest['target']['name']}) and this machine is {for_arch}: "
                f"run it with `autoglm bench {artifact} --device qemu` or on a board"
            )
        verified = VerifiedArtifact(artifact, manifest, digest, lib_arch, lib_fd)
        lib_fd = -1
        return verified
    finally:
        if lib_fd >= 0:
            os.close(lib_fd)


def open_artifact(artifact: str | Path, *, for_arch: str | None = None) -> VerifiedArtifact:
    """Check an artifact completely (manifest digest and fields, paths, checksums, ELF header, architecture).

    The returned object holds the checked library open; use it as a context manager or call `close`.
    """
    artifact = Path(artifact)
    return _with_retries(artifact, lambda dir_fd: _verify_at(dir_fd, artifact, for_arch))


def check_artifact(artifact: str | Path, *, for_arch: str | None = None) -> dict[str, Any]:
    """Verify the manifest, every path and checksum, and the library's ELF header (and, if given, the architecture)."""
    with open_artifact(artifact, for_arch=for_arch) as verified:
        return verified.manifest


# ---- output locations -------------------------------------------------------------------------------

def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _probe_writable(directory: Path) -> str | None:
    """Why files cannot be created in `directory`, or None (probed with a file removed at once)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".autoglm-probe-", dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return None


def _check_parent(path: Path, what: str) -> None:
    anc = _nearest_existing(path.parent if path.parent != path else path)
    if not anc.is_dir():
        raise UsageError(f"{what} {path}: {anc} is a file, not a directory; choose another location")
    why = _probe_writable(anc)
    if why:
        raise UsageError(f"{what} {path}: cannot create files in {anc} ({why}); choose a location you can write to")


def check_output_file(path: str | Path, what: str) -> Path:
    """Fail now, with one line, if a file cannot be written at `path` (checked before any long work starts)."""
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise UsageError(f"{what} {path} is a directory; give a file name")
    if len(path.name.encode("utf-8", "surrogateescape")) > NAME_MAX - 20:  # room for the atomic write's temp name
        raise UsageError(f"{what} {path}: the file name is too long (at most {NAME_MAX - 20} bytes)")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory; give a file name")
    _check_parent(path, what)
    return path


def _stage_prefix(name: str) -> str:
    return f".{name[:100]}.partial-"


def artifact_members(path: Path) -> set[str] | None:
    """The files of the autoglm artifact at `path` (all of them, none foreign), or None if it is not one."""
    try:
        raw = (path / MANIFEST).read_bytes()
        m = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(m, dict) or m.get("format_version") not in READABLE_FORMATS:
        return None
    files, library = m.get("files"), m.get("library")
    if not isinstance(files, dict) or not isinstance(library, str) or library not in files:
        return None
    if any(member_path_problem(rel) for rel in files):
        return None
    allowed = set(files) | {MANIFEST, MANIFEST_DIGEST}
    allowed_dirs = {"/".join(rel.split("/")[:i]) for rel in files for i in range(1, rel.count("/") + 1)}
    for root, dirs, names in os.walk(path):
        rel_root = os.path.relpath(root, path)
        for name in dirs + names:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            full = os.path.join(root, name)
            if os.path.islink(full):
                return None
            if name in dirs:
                if rel not in allowed_dirs:
                    return None
            elif rel not in allowed or not os.path.isfile(full):
                return None
    return allowed


def check_output_dir(out_dir: str | Path) -> Path:
    """Fail now, with one line, unless `out_dir` may receive an artifact: absent, empty, or an artifact of this toolkit."""
    out_dir = Path(out_dir)
    absolute = Path(os.path.abspath(out_dir))
    try:
        cwd = Path(os.getcwd())
    except OSError:
        cwd = None
    if cwd is not None and (absolute == cwd or absolute in cwd.parents):
        raise UsageError(f"output directory {out_dir} is the current directory (or holds it); give a new directory for "
                         f"the artifact, e.g. -o build/{absolute.name or 'model'}")
    if not absolute.name:
        raise UsageError(f"output directory {out_dir} is not a directory name; give e.g. -o build/model")
    if len(absolute.name.encode("utf-8", "surrogateescape")) > NAME_MAX - 20:
        raise UsageError(f"output directory {out_dir}: the name is too long (at most {NAME_MAX - 20} bytes)")
    if os.path.islink(absolute):
        raise UsageError(f"output path {out_dir} is a symbolic link; give the directory itself (nothing was changed)")
    if absolute.exists():
        if not absolute.is_dir():
            raise UsageError(f"output path {out_dir} exists and is a file, not an artifact; choose another -o or remove it")
        if any(absolute.iterdir()) and artifact_members(absolute) is None:
            raise UsageError(f"output path {out_dir} exists and is not an artifact of this toolkit (it holds files that "
                             f"are not the artifact's own); nothing was changed: choose another -o or empty it yourself")
    _check_parent(absolute, "output directory")
    return out_dir


# ---- interrupts -------------------------------------------------------------------------------------

_interrupts: list[int] = []
_critical_depth = 0
published: list[Path] = []  # artifacts this process published (for the CLI's message after an interrupt)


def _on_signal(signum: int, _frame: Any) -> None:
    _interrupts.append(signum)
    if _critical_depth == 0:
        raise KeyboardInterrupt


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (so staging is cleaned up) and are remembered, so that an
    interrupt swallowed by a library on the way can still stop the publish."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)


def interrupted() -> int | None:
    """The first signal (SIGINT/SIGTERM) received since `install_interrupt_handlers`, or None."""
    return _interrupts[0] if _interrupts else None


@contextlib.contextmanager
def _critical() -> Iterator[None]:
    """A section an interrupt must not split: the signal is remembered and acted on after it."""
    global _critical_depth
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run a block that calls TVM with Python callbacks inside (schedule rules walk TIR through
    `tvm_ffi.structural_walk`): a KeyboardInterrupt raised in such a callback can reach a C++ frame that
    cannot pass it on, and the process aborts. An interrupt during the block is raised after it."""
    with _critical():
        yield
    if interrupted():
        raise KeyboardInterrupt


# ---- writing an artifact ----------------------------------------------------------------------------

def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _apply_umask(root: Path) -> None:
    """Files as the user's umask says (mkstemp and mkdtemp make them private): others can load the artifact."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask, follow_symlinks=False)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, (0o777 if st.st_mode & stat.S_IXUSR else 0o666) & ~mask)


def _is_live(partial: Path) -> bool:
    """Whether a `.NAME.partial-*` directory belongs to a running compile (which holds a lock on it)."""
    try:
        fd = os.open(partial, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True  # not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove what killed compiles of `out_dir` left beside it (staging folders, old `.old-*` renames)."""
    parent, name = out_dir.parent, out_dir.name
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    prefix, old_prefix = _stage_prefix(name), f".{name}.old-"
    for p in entries:
        if not (p.name.startswith(prefix) or p.name.startswith(old_prefix)) or p.is_symlink() or not p.is_dir():
            continue
        if p.name.startswith(prefix) and _is_live(p):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


# Whether staging_dir points tempfile.tempdir and TMPDIR into the staging folder, so a killed compile's
# TVM and compiler temporaries go with it. They are process-wide: the CLI (one compile per process) turns
# this on; a library user who compiles in several threads at once keeps the default.
REDIRECT_TEMP_FILES = False


@contextlib.contextmanager
def _parent_lock(parent: Path) -> Iterator[int]:
    """An exclusive lock on directory `parent` (flock on the directory itself: no lock file is left behind)."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of `out_dir` to build the artifact in; everything in it is removed unless published.

    With REDIRECT_TEMP_FILES (the CLI), TVM's and the compilers' temporary files go inside it too
    (`tempfile.tempdir`, TMPDIR), so a killed compile leaves one `.NAME.partial-*` folder, which the
    next compile of `out_dir` removes.
    Parent directories created for `out_dir` are removed again if nothing was published.
    """
    out_dir = Path(os.path.abspath(out_dir))
    check_output_dir(out_dir)
    created: list[Path] = []
    signals_before = len(_interrupts)
    partial: Path | None = None
    redirect, saved = False, (tempfile.tempdir, os.environ.get("TMPDIR"))
    # An interrupt between creating the parent folders and the build would leave them behind (seen on CI:
    # SIGINT right after the import line): setup and cleanup are critical sections, and a signal that
    # arrived during setup is raised after it, inside the `try`, so the cleanup sees it.
    try:
        with _critical():
            partial, lock = _make_staging(out_dir, created)
            stage, scratch = partial / "artifact", partial / "tmp"
            stage.mkdir()
            if REDIRECT_TEMP_FILES:
                scratch.mkdir()
                redirect = True
                tempfile.tempdir = str(scratch)
                os.environ["TMPDIR"] = str(scratch)
        if len(_interrupts) > signals_before:
            raise KeyboardInterrupt
        yield stage
    finally:
        with _critical():
            if redirect:
                tempfile.tempdir = saved[0]
                if saved[1] is None:
                    os.environ.pop("TMPDIR", None)
                else:
                    os.environ["TMPDIR"] = saved[1]
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
                os.close(lock)
            if not out_dir.is_dir():  # nothing published (the staged artifact was moved there if it was)
                _remove_empty(created)


def _make_staging(out_dir: Path, created: list[Path]) -> tuple[Path, int]:
    """Create `out_dir`'s missing parents (appended to `created`, deepest first) and a locked staging folder."""
    p = out_dir.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        for d in reversed(created):
            d.mkdir()
    except OSError as exc:
        _remove_empty(created)
        raise UsageError(f"cannot create output directory {out_dir.parent}: {exc.strerror}") from None
    with _parent_lock(out_dir.parent):  # so a concurrent compile's clean_stale never sees ours unlocked
        clean_stale(out_dir)
        try:
            partial = Path(tempfile.mkdtemp(prefix=_stage_prefix(out_dir.name), dir=out_dir.parent))
        except OSError as exc:
            _remove_empty(created)
            raise UsageError(f"cannot create files in {out_dir.parent} ({exc.strerror}); choose another -o") from None
        lock = os.open(partial, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(lock, fcntl.LOCK_EX)  # marks it live for clean_stale of a concurrent compile
    return partial, lock


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first
        try:
            d.rmdir()
        except OSError:
            break


def write_manifest(stage: Path, manifest: dict[str, Any]) -> None:
    """Checksum every file of the staged directory, write its manifest and the manifest's digest."""
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = {
        p.relative_to(stage).as_posix(): sha256_file(p) for p in sorted(stage.rglob("*"))
        if p.name not in (MANIFEST, MANIFEST_DIGEST) and not p.is_symlink() and p.is_file()
    }
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    validate_manifest(json.loads(data), stage)  # what the toolkit writes, its readers accept
    write_atomic(stage / MANIFEST, data)
    write_atomic(stage / MANIFEST_DIGEST, f"{sha256_bytes(data)}  {MANIFEST}\n")
    _apply_umask(stage)


_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def publish(stage: Path, out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest and put the staged artifact at `out_dir` in one atomic step.

    Publishers of the same directory are serialised by a lock on its parent; an existing artifact
    is swapped out with `renameat2(RENAME_EXCHANGE)` (readers see the old one or the new one, whole)
    and then removed. An interrupt received at any time before this point stops the publish.
    """
    write_manifest(stage, manifest)
    if interrupted():
        raise KeyboardInterrupt
    out_dir = Path(os.path.abspath(out_dir))
    with _critical(), _parent_lock(out_dir.parent) as parent_fd:
        check_output_dir(out_dir)  # again, under the lock: the path may have changed since the compile began
        if os.path.lexists(out_dir):
            try:
                _renameat2(stage, out_dir, _RENAME_EXCHANGE)
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                    raise UsageError(f"cannot replace {out_dir}: {exc.strerror}") from None
                # no atomic exchange on this filesystem: two renames, under the lock
                old = stage.with_name("old")
                os.rename(out_dir, old)
                os.rename(stage, out_dir)
                os.rename(old, stage)
            shutil.rmtree(stage, ignore_errors=True)  # the previous artifact, now in the staging folder
        else:
            try:
                _renameat2(stage, out_dir, _RENAME_NOREPLACE)
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                    raise UsageError(f"cannot create {out_dir}: {exc.strerror}") from None
                os.rename(stage, out_dir)
        os.fsync(parent_fd)
        published.append(out_dir)
    if interrupted():
        raise KeyboardInterrupt
    return out_dir
