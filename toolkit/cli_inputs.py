"""Input arrays for `autoglm run`: .npy files and .npz archives, read as untrusted files.

Every problem is a UsageError in one line: a file that is not NumPy's, a header that lies about
its size (checked against the bytes really there before anything is allocated), pickled objects
(never loaded), a broken or oversized archive member.
"""

from __future__ import annotations

import ast
import io
import lzma
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from compile import UsageError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
MAX_HEADER = 10_000
MAX_ARRAY_BYTES = 2 << 30  # an edge model's input; also bounds what a crafted .npz can make us decompress
_KINDS = "biuf"  # bool, signed, unsigned, float


def _header(f: io.BufferedIOBase, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy header (parsed as a literal, never evaluated)."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != NPY_MAGIC:
        raise UsageError(f"{what} is not a .npy file (no NumPy header); save arrays with numpy.save")
    major = magic[6]
    if major == 1:
        raw = f.read(2)
        size = int.from_bytes(raw, "little") if len(raw) == 2 else -1
    elif major in (2, 3):
        raw = f.read(4)
        size = int.from_bytes(raw, "little") if len(raw) == 4 else -1
    else:
        raise UsageError(f"{what}: unsupported .npy format version {major}.{magic[7]}; save it again with numpy.save")
    if size < 0:
        raise UsageError(f"{what} is truncated inside its .npy header")
    if size > MAX_HEADER:
        raise UsageError(f"{what}: its .npy header is {size} bytes long (at most {MAX_HEADER}); save it again with numpy.save")
    text = f.read(size)
    if len(text) != size:
        raise UsageError(f"{what} is truncated inside its .npy header")
    try:
        with warnings.catch_warnings():  # a mangled header's odd escapes must not print warnings
            warnings.simplefilter("ignore")
            d = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        raise UsageError(f"{what}: its .npy header is not a readable dict; save it again with numpy.save") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise UsageError(f"{what}: its .npy header lacks descr, fortran_order or shape; save it again with numpy.save")
    shape, fortran, descr = d["shape"], d["fortran_order"], d["descr"]
    if not (isinstance(shape, tuple) and len(shape) <= 32 and all(type(n) is int and 0 <= n < 2**40 for n in shape)):
        raise UsageError(f"{what}: bad shape {str(shape)[:60]} in its .npy header")
    if not isinstance(fortran, bool):
        raise UsageError(f"{what}: bad fortran_order in its .npy header")
    if not isinstance(descr, str):
        raise UsageError(f"{what} holds a structured or object array; give a plain numeric array")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError, MemoryError, OverflowError):
        raise UsageError(f"{what}: unknown dtype {descr[:40]!r} in its .npy header") from None
    if dtype.hasobject or dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UsageError(f"{what} holds {dtype} data (objects, strings or records are not model inputs; pickled data "
                         f"is never loaded); give a numeric array")
    return shape, fortran, dtype


def _array(f: io.BufferedIOBase, available: int, what: str) -> np.ndarray:
    shape, fortran, dtype = _header(f, what)
    count = 1
    for n in shape:
        count *= n
    need = count * dtype.itemsize
    if need > MAX_ARRAY_BYTES:
        raise UsageError(f"{what}: its header declares {need} bytes of data (at most {MAX_ARRAY_BYTES >> 30} GiB)")
    have = available - f.tell()
    if have < need:
        raise UsageError(f"{what} is truncated: its header declares {need} bytes of data, the file holds {max(have, 0)}")
    data = f.read(need)
    if len(data) != need:
        raise UsageError(f"{what} is truncated: its header declares {need} bytes of data, the file holds {len(data)}")
    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    return np.array(arr, order="C")  # writable, contiguous, native layout kept as given


def read_npy(path: str | Path) -> np.ndarray:
    """The array in a .npy file."""
    path = Path(path)
    what = f"input file {path}"
    try:
        with open(path, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            return _array(f, size, what)
    except IsADirectoryError:
        raise UsageError(f"{what} is a directory; give a .npy file") from None
    except FileNotFoundError:
        raise UsageError(f"{what} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what}: {exc.strerror or exc}") from None


def read_npz(path: str | Path, key: str | None) -> np.ndarray:
    """Array `key` of a .npz archive (or its only array when `key` is None)."""
    path = Path(path)
    what = f"input file {path}"
    try:
        with zipfile.ZipFile(path) as z:
            members = {info.filename.removesuffix(".npy"): info for info in z.infolist() if not info.is_dir()}
            if key is None:
                if len(members) != 1:
                    raise UsageError(f"{what} is an .npz archive of {len(members)} arrays "
                                     f"({', '.join(map(repr, sorted(members)[:8]))}); give NAME=FILE.npz:ARRAY")
                key = next(iter(members))
            if key not in members:
                raise UsageError(f"{what} has no array {key!r} (it has: {', '.join(map(repr, sorted(members)[:8])) or 'none'})")
            info = members[key]
            with z.open(info) as member:  # streamed: only the bytes the (checked) header declares are inflated
                return _array(member, info.file_size, f"{what} (array {key!r})")
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"{what} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a directory; give a .npz file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, EOFError,
            OSError, OverflowError, UnicodeDecodeError, zlib.error, lzma.LZMAError) as exc:  # zipfile's ways to say "corrupt"
        why = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise UsageError(f"{what} is not a readable .npz archive ({why}); save it with numpy.savez") from None


def read_input(path: str | Path, key: str | None = None) -> np.ndarray:
    """An input array from a .npy file or a .npz archive, whichever the file's first bytes say it is."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except IsADirectoryError:
        raise UsageError(f"input file {path} is a directory; give a .npy file") from None
    except FileNotFoundError:
        raise UsageError(f"input file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read input file {path}: {exc.strerror or exc}") from None
    if head.startswith(ZIP_MAGIC) or path.suffix.lower() == ".npz":
        return read_npz(path, key)
    if key is not None:
        raise UsageError(f"input file {path} is not an .npz archive, so ':{key}' names nothing in it")
    return read_npy(path)


def parse_input_flag(spec: str) -> tuple[str, Path, str | None]:
    """`NAME=FILE.npy` or `NAME=FILE.npz[:ARRAY]` -> (name, file, array key or None)."""
    name, sep, file = spec.partition("=")
    if not sep or not name or not file:
        raise UsageError(f"--input {spec!r} is not NAME=FILE.npy (or NAME=FILE.npz[:ARRAY])")
    key = None
    base, colon, tail = file.rpartition(":")
    if colon and base.lower().endswith(".npz") and tail:
        file, key = base, tail
    return name, Path(file), key
