"""Seeded mutation fuzzing of the artifact manifest loader and the .npy/.npz input readers.

Every mutation of a valid file must give either a clean result or the toolkit's own error (AutoglmError)
with a one-line message; any other exception, a crash or a hang is a failure, reported with the seed and
case number that reproduce it. A library outside the artifact with a constructor that writes a marker
shows that no mutation makes a loader run foreign code. `AUTOGLM_FUZZ_CASES` scales the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

import targets
from conftest import have

SEED = int(os.environ.get("AUTOGLM_FUZZ_SEED", "0"))
SCALE = float(os.environ.get("AUTOGLM_FUZZ_CASES", "1"))
MANIFEST_CASES = int(2000 * SCALE)
RUNNER_CASES = int(300 * SCALE)
NPY_CASES = int(1500 * SCALE)
NPZ_CASES = int(600 * SCALE)

TRICK_PATHS = ["../evil.so", "../../evil.so", "/tmp/evil.so", "", ".", "a/../model.so", "./model.so", "model.so/",
               "sub//model.so", "a\\b.so", "x\x00y", "model.so\n", "é/" * 40, "a" * 300, "../" * 20 + "etc/passwd"]
ODD_VALUES = [None, True, False, 0, -1, 2**31, 2**63, 10**30, 1.5, float("nan"), "", "x" * 1000, [], {}, [1, "a"],
              {"k": None}, "../evil.so", "/bin/true"]


def _one_line_error(exc: BaseException) -> bool:
    from compile.errors import AutoglmError

    return isinstance(exc, AutoglmError) and "\n" not in str(exc) and len(str(exc)) < 2000


# ---- a small, valid artifact ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(host_artifact, tmp_path_factory) -> tuple[Path, dict, Path]:
    """An artifact with the real manifest of `host_artifact` but a tiny library (cheap to hash thousands of
    times), the marker library beside it, and the marker path."""
    if not have("gcc"):
        pytest.skip("gcc is needed for the small libraries")
    d = tmp_path_factory.mktemp("fuzz")
    marker = d / "RAN"
    (d / "evil.c").write_text('#include <stdio.h>\n__attribute__((constructor)) static void r(void) '
                              f'{{ FILE* f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(d / "evil.so"), str(d / "evil.c")], check=True)
    (d / "tiny.c").write_text("int autoglm_tiny(void) { return 0; }\n")
    art = d / "art"
    art.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(art / "model.so"), str(d / "tiny.c")], check=True)
    manifest = json.loads((host_artifact / "manifest.json").read_text())
    manifest["files"] = {"model.so": hashlib.sha256((art / "model.so").read_bytes()).hexdigest()}
    _write(art, json.dumps(manifest, indent=2).encode(), digest=True)
    from compile import check_artifact

    check_artifact(art)  # the base is valid
    return art, manifest, marker


def _write(art: Path, data: bytes, digest: bool) -> None:
    (art / "manifest.json").write_bytes(data)
    side = hashlib.sha256(data).hexdigest() if digest else "0" * 64
    (art / "manifest.json.sha256").write_text(f"{side}  manifest.json\n")


def _paths(obj, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _delete(obj, path):
    for p in path[:-1]:
        obj = obj[p]
    del obj[path[-1]]


def mutate_manifest(rng: random.Random, manifest: dict, text: bytes) -> tuple[bytes, str]:
    """One mutated manifest and a description of what was done."""
    kind = rng.choice(["value", "value", "value", "delete", "path", "path", "bytes", "truncate", "duplicate"])
    if kind in ("bytes", "truncate"):
        data = bytearray(text)
        if kind == "truncate":
            return bytes(data[: rng.randrange(len(data))]), "truncate"
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), "bytes"
    if kind == "duplicate":
        key = rng.choice(['"library"', '"files"', '"inputs"', '"target"', '"format_version"'])
        i = text.find(key.encode())
        return text[:i] + key.encode() + b': "../evil.so", ' + text[i:], f"duplicate {key}"
    m = json.loads(text)
    paths = [p for p, _ in _paths(m) if p]
    if kind == "path":
        choice = rng.choice(["library", "files-key", "files-add"])
        trick = rng.choice(TRICK_PATHS)
        if choice == "library":
            m["library"] = trick
            m["files"][trick] = m["files"].get("model.so", "0" * 64)
        elif choice == "files-key":
            digest = m["files"].pop("model.so", "0" * 64)
            m["files"][trick] = digest
        else:
            m["files"][trick] = "a" * 64
        return json.dumps(m).encode(), f"path {choice} {trick!r}"
    path = rng.choice(paths)
    if kind == "delete":
        _delete(m, path)
        return json.dumps(m).encode(), f"delete {path}"
    value = rng.choice(ODD_VALUES)
    _set(m, path, value)
    return json.dumps(m).encode(), f"set {path} = {value!r:.40}"


def test_manifest_loader_fuzz(base, tmp_path):
    from compile import check_artifact
    from compile.artifact import member_path_problem
    from toolkit import runtime

    art0, manifest, marker = base
    text = (art0 / "manifest.json").read_bytes()
    rng = random.Random(SEED)
    art = tmp_path / "art"
    shutil.copytree(art0, art)
    shutil.copy(art0.parent / "evil.so", tmp_path / "evil.so")  # where '../evil.so' would lead
    accepted = refused = 0
    for case in range(MANIFEST_CASES):
        data, what = mutate_manifest(rng, manifest, text)
        _write(art, data, digest=rng.random() < 0.9)
        try:
            m = check_artifact(art)
        except Exception as exc:  # noqa: BLE001 - what kind of exception is the point of the test
            assert _one_line_error(exc), f"seed {SEED} case {case} ({what}): {type(exc).__name__}: {exc}"
            refused += 1
            continue
        accepted += 1
        # accepted: every path it names is inside, and loading it (the tiny library) fails cleanly or works
        assert member_path_problem(m["library"]) is None and all(member_path_problem(p) is None for p in m["files"])
        try:
            runtime.load(art)
        except Exception as exc:  # noqa: BLE001
            assert _one_line_error(exc), f"seed {SEED} case {case} ({what}): {type(exc).__name__}: {exc}"
    assert not marker.exists(), "a mutated manifest made a loader run foreign code"
    assert refused > MANIFEST_CASES // 2 and accepted > 0, (accepted, refused)


@pytest.mark.skipif(targets.host_arch() != "x86_64" or not have("cmake"), reason="the C++ runner is built for x86_64 here")
def test_cpp_manifest_loader_fuzz(base, tmp_path):
    """The same mutations through the C++ runner: its own exit codes and one error line, never a signal."""
    from toolkit import native

    runner = native.runner_path(native.build_runtime("x86_64"))
    art0, manifest, marker = base
    text = (art0 / "manifest.json").read_bytes()
    rng = random.Random(SEED + 1)
    art = tmp_path / "art"
    shutil.copytree(art0, art)
    shutil.copy(art0.parent / "evil.so", tmp_path / "evil.so")
    codes: dict[int, int] = {}
    for case in range(RUNNER_CASES):
        data, what = mutate_manifest(rng, manifest, text)
        _write(art, data, digest=rng.random() < 0.9)
        proc = subprocess.run([str(runner), str(art), "--repeat", "0", "--json"], capture_output=True, text=True,
                              timeout=60)
        where = f"seed {SEED + 1} case {case} ({what}): exit {proc.returncode}: {proc.stderr[-300:]}"
        assert proc.returncode in (0, 1, 2, 3, 4, 5), where
        assert proc.returncode == 0 or proc.stderr.count("error:") == 1, where
        codes[proc.returncode] = codes.get(proc.returncode, 0) + 1
    assert not marker.exists(), "a mutated manifest made the runner run foreign code"
    assert codes.get(3, 0) and codes.get(4, 0), codes  # both manifest and checksum refusals were reached


# ---- .npy and .npz inputs ------------------------------------------------------------------------------

def _npy_samples() -> list[bytes]:
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((1, 3, 8, 8), np.float32), np.array(3.5),
              np.arange(16, dtype=np.int64).reshape(2, 8), np.asfortranarray(np.ones((3, 5), np.float64)),
              np.array([True, False]), np.arange(6, dtype=np.uint8)]
    out = []
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, a)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arrays[0], version=(2, 0))
    out.append(buf.getvalue())
    return out


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    op = rng.choice(["flip", "flip", "header", "truncate", "extend", "splice"])
    if op == "truncate":
        return bytes(data[: rng.randrange(len(data))])
    if op == "extend":
        return bytes(data) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    if op == "splice":
        i, j = sorted(rng.randrange(len(data)) for _ in range(2))
        return bytes(data[:i] + data[j:])
    lo, hi = (0, min(len(data), 128)) if op == "header" else (0, len(data))
    for _ in range(rng.randint(1, 6)):
        data[rng.randrange(lo, hi)] = rng.randrange(256)
    return bytes(data)


HEADER_TRICKS = [b"(1000000000, 1000000000)", b"(-1,)", b"()", b"(1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,"
                 b"20,21,22,23,24,25,26,27,28,29,30,31,32,33)", b"'|O'", b"'<U3'", b"'V8'", b"'>f4'", b"'<c16'",
                 b"True", b"[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]", b"{'a': 1}", b"__import__('os')"]


_FIELDS = [rb"'shape': \([^)]*\)", rb"'descr': '[^']*'", rb"'fortran_order': (True|False)"]


def _mutate_npy(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.3 and data[6] == 1:  # rewrite a header field of a version 1.0 file with something odd
        end = 10 + int.from_bytes(data[8:10], "little")
        header = data[10:end]
        pattern = rng.choice(_FIELDS)
        key = pattern.split(b":")[0]
        header = re.sub(pattern, lambda _m: key + b": " + rng.choice(HEADER_TRICKS), header, count=1)
        size = len(header) if rng.random() < 0.7 else end - 10  # a right or a stale length
        return data[:8] + size.to_bytes(2, "little") + header + data[end:]
    return _mutate_bytes(rng, data)


def test_npy_reader_fuzz(tmp_path):
    from toolkit.cli_inputs import read_input

    samples = _npy_samples()
    rng = random.Random(SEED + 2)
    path = tmp_path / "x.npy"
    ok = 0
    for case in range(NPY_CASES):
        data = _mutate_npy(rng, rng.choice(samples))
        path.write_bytes(data)
        try:
            arr = read_input(path)
            assert isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf"
            ok += 1
        except Exception as exc:  # noqa: BLE001
            assert _one_line_error(exc), f"seed {SEED + 2} case {case}: {type(exc).__name__}: {exc}"
    assert 0 < ok < NPY_CASES


def _npz_samples(tmp_path: Path) -> list[bytes]:
    out = []
    for i, save in enumerate((np.savez, np.savez_compressed)):
        p = tmp_path / f"s{i}.npz"
        save(p, x=np.arange(24, dtype=np.float32).reshape(2, 3, 4), ids=np.arange(8, dtype=np.int64))
        out.append(p.read_bytes())
    # a "bomb": the central directory claims a huge entry
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", b"\x00" * (1 << 20))
    out.append(buf.getvalue())
    return out


def test_npz_reader_fuzz(tmp_path):
    from toolkit.cli_inputs import read_input

    samples = _npz_samples(tmp_path)
    rng = random.Random(SEED + 3)
    path = tmp_path / "x.npz"
    ok = 0
    for case in range(NPZ_CASES):
        data = _mutate_bytes(rng, rng.choice(samples)) if rng.random() < 0.9 else rng.choice(samples)
        path.write_bytes(data)
        key = rng.choice([None, "x", "ids", "nope"])
        try:
            arr = read_input(path, key)
            assert isinstance(arr, np.ndarray)
            ok += 1
        except Exception as exc:  # noqa: BLE001
            assert _one_line_error(exc), f"seed {SEED + 3} case {case} key {key}: {type(exc).__name__}: {exc}"
    assert ok > 0
