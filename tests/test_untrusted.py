"""Artifacts from elsewhere are untrusted: no foreign code runs, no file outside the artifact is opened,
no manifest field is believed unchecked, and `compile -o` never deletes what is not its own.

Each trick is tried against every reader: `autoglm run` and `autoglm inspect` (the CLI), the Python
runtime (`toolkit.runtime.load`) and the C++ runner. Forged artifacts are self-consistent (their
manifest digest is recomputed), so what refuses them is the path and type checks, not the digest.
A library made here with a constructor that writes a marker file shows whether foreign code ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import targets
from conftest import assert_nothing_written, assert_user_error, have, run_cli

ROOT = Path(__file__).resolve().parent.parent

EVIL_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void ran(void) {
  FILE* f = fopen("%s", "w");
  if (f) { fputs("foreign code ran\n", f); fclose(f); }
}
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(artifact: Path, manifest: dict | bytes) -> None:
    """Write a manifest and a matching digest (what a forger who knows the format does)."""
    data = manifest if isinstance(manifest, bytes) else (json.dumps(manifest, indent=2) + "\n").encode()
    (artifact / "manifest.json").write_bytes(data)
    (artifact / "manifest.json.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  manifest.json\n")


def forge(artifact: Path, dest: Path, edit: Callable[[dict, Path], None]) -> Path:
    """A copy of `artifact` whose manifest `edit` changed (and whose digest was recomputed)."""
    shutil.copytree(artifact, dest)
    m = json.loads((dest / "manifest.json").read_text())
    edit(m, dest)
    write_manifest(dest, m)
    return dest


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> tuple[Path, Path]:
    """A shared library whose constructor writes a marker file, outside any artifact."""
    if not have("gcc"):
        pytest.skip("gcc is needed to build the marker library")
    d = tmp_path_factory.mktemp("evil")
    marker = d / "RAN"
    (d / "evil.c").write_text(EVIL_C % marker)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(d / "evil.so"), str(d / "evil.c")], check=True)
    return d / "evil.so", marker


@pytest.fixture(scope="module")
def host_runtime() -> Path:
    if targets.host_arch() != "x86_64" or not have("cmake") or not have("g++"):
        pytest.skip("the C++ runner is built for an x86_64 host here (needs cmake, g++)")
    from toolkit import native

    return native.build_runtime("x86_64")


def runner(runtime: Path, artifact: Path, *args: str) -> subprocess.CompletedProcess:
    from toolkit import native

    return subprocess.run([str(native.runner_path(runtime)), str(artifact), "--repeat", "0", *args],
                          capture_output=True, text=True, timeout=120)


def refused_everywhere(artifact: Path, runtime: Path | None, fragment: str, cpp_fragment: str, cpp_code: int,
                       marker: Path | None = None) -> None:
    """`run` and `inspect` exit 1 with one line, the Python runtime raises ArtifactError, the C++ runner exits
    `cpp_code`; none of them runs foreign code."""
    from compile import ArtifactError
    from toolkit import runtime as py_runtime

    assert_user_error(run_cli("run", artifact, "--random"), 1, fragment)
    assert_user_error(run_cli("inspect", artifact), 1, fragment)
    with pytest.raises(ArtifactError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        py_runtime.load(artifact)
    if runtime is not None:
        proc = runner(runtime, artifact)
        assert proc.returncode == cpp_code, (proc.returncode, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
        assert len(lines) == 1 and cpp_fragment in lines[0], proc.stderr
    if marker is not None:
        assert not marker.exists(), "foreign code ran"


# ---- the library and the files must stay inside the artifact ---------------------------------------

def test_library_path_escaping_the_artifact(host_artifact, evil, host_runtime, tmp_path):
    lib, marker = evil
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(lib, other / "model.so")
    art = tmp_path / "art" / "m"

    def edit(m, _d):
        m["library"] = "../../other/model.so"
        m["files"]["../../other/model.so"] = sha(other / "model.so")

    (tmp_path / "art").mkdir()
    forge(host_artifact, art, edit)
    refused_everywhere(art, host_runtime, "'..' part", "is not a path inside the artifact", 3, marker)


def test_absolute_library_path(host_artifact, evil, host_runtime, tmp_path):
    lib, marker = evil

    def edit(m, _d):
        m["library"] = str(lib)
        m["files"][str(lib)] = sha(lib)

    art = forge(host_artifact, tmp_path / "abs", edit)
    refused_everywhere(art, host_runtime, "is an absolute path", "is an absolute path", 3, marker)


def test_listed_file_outside_the_artifact(host_artifact, host_runtime, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not the artifact's\n")

    def edit(m, _d):
        m["files"]["../secret.txt"] = sha(secret)

    art = forge(host_artifact, tmp_path / "outside", edit)
    refused_everywhere(art, host_runtime, "'..' part", "'..' part", 3)


def test_library_that_is_a_symlink_out(host_artifact, evil, host_runtime, tmp_path):
    lib, marker = evil

    def edit(m, d):
        (d / "model.so").unlink()
        os.symlink(lib, d / "model.so")
        m["files"]["model.so"] = sha(lib)

    art = forge(host_artifact, tmp_path / "link", edit)
    refused_everywhere(art, host_runtime, "model.so is a symbolic link", "model.so is a symbolic link", 4, marker)


def test_directory_symlink_inside_the_artifact(host_artifact, evil, host_runtime, tmp_path):
    lib, marker = evil
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(lib, outside / "model.so")

    def edit(m, d):
        os.symlink(outside, d / "sub")
        m["library"] = "sub/model.so"
        m["files"]["sub/model.so"] = sha(lib)

    art = forge(host_artifact, tmp_path / "dirlink", edit)
    refused_everywhere(art, host_runtime, "sub is a symbolic link", "sub is a symbolic link", 4, marker)


def test_artifact_directory_itself_may_be_a_link(host_artifact, tmp_path):
    """A `current -> v2` link to an artifact is how deployments switch versions: that is allowed."""
    from toolkit import runtime as py_runtime

    os.symlink(host_artifact, tmp_path / "current")
    assert py_runtime.load(tmp_path / "current").manifest["library"] == "model.so"


def test_library_that_is_a_fifo_does_not_hang(host_artifact, host_runtime, tmp_path):
    def edit(m, d):
        (d / "model.so").unlink()
        os.mkfifo(d / "model.so")

    art = forge(host_artifact, tmp_path / "fifo", edit)
    refused_everywhere(art, host_runtime, "model.so is not a regular file", "model.so is not a regular file", 4)


# ---- the manifest is covered by the integrity check --------------------------------------------------

def test_manifest_edit_without_digest_is_refused(host_artifact, host_runtime, tmp_path):
    art = tmp_path / "edited"
    shutil.copytree(host_artifact, art)
    m = json.loads((art / "manifest.json").read_text())
    m["inputs"][0]["shape"] = [1, 3, 16, 16]  # files untouched: only the digest can tell
    (art / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    refused_everywhere(art, host_runtime, "manifest.json does not match its checksum in manifest.json.sha256",
                       "manifest.json does not match its checksum", 4)


def test_missing_manifest_digest_is_refused(host_artifact, host_runtime, tmp_path):
    art = tmp_path / "nodigest"
    shutil.copytree(host_artifact, art)
    (art / "manifest.json.sha256").unlink()
    refused_everywhere(art, host_runtime, "has no manifest.json.sha256", "has no manifest.json.sha256", 4)


def test_duplicate_manifest_keys_are_refused(host_artifact, evil, host_runtime, tmp_path):
    """Two `library` keys could be read differently by two parsers: both refuse the manifest."""
    lib, marker = evil
    art = tmp_path / "dup"
    shutil.copytree(host_artifact, art)
    text = (art / "manifest.json").read_text()
    text = text.replace('"library": "model.so",', f'"library": "model.so",\n  "library": "{lib}",', 1)
    write_manifest(art, text.encode())
    refused_everywhere(art, host_runtime, "duplicate key 'library'", "duplicate key \"library\"", 3, marker)


@pytest.mark.parametrize("field, value, fragment", [
    ("format_version", 1, "has artifact format 1"),
    ("target.arch", "mips", "field 'target.arch' must be one of"),
    ("inputs", "x", "field 'inputs' must be a list of tensors"),
    ("files.model.so", "0" * 63, "field 'files.model.so' must be a sha256"),
])
def test_wrong_field_is_named(host_artifact, host_runtime, tmp_path, field, value, fragment):
    def edit(m, _d):
        if field == "files.model.so":
            m["files"]["model.so"] = value
        elif "." in field:
            a, b = field.split(".")
            m[a][b] = value
        else:
            m[field] = value

    art = forge(host_artifact, tmp_path / "field", edit)
    from compile import ArtifactError
    from toolkit import runtime as py_runtime

    assert_user_error(run_cli("run", art, "--random"), 1, fragment)
    assert_user_error(run_cli("inspect", art), 1, fragment)
    with pytest.raises(ArtifactError):
        py_runtime.load(art)
    proc = runner(host_runtime, art)
    assert proc.returncode == 3 and proc.stderr.count("error:") == 1, proc.stderr


# ---- the architecture comes from the library's ELF header -------------------------------------------

def test_aarch64_library_with_a_manifest_saying_x86_64(host_artifact, host_runtime, tmp_path):
    if not have("aarch64-linux-gnu-gcc"):
        pytest.skip("aarch64-linux-gnu-gcc not installed: apt-get install gcc-aarch64-linux-gnu")
    (tmp_path / "a.c").write_text("int autoglm_marker(void) { return 1; }\n")
    lib = tmp_path / "arm.so"
    subprocess.run(["aarch64-linux-gnu-gcc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "a.c")], check=True)

    def edit(m, d):
        shutil.copy(lib, d / "model.so")
        m["files"]["model.so"] = sha(lib)  # manifest still says x86_64

    art = forge(host_artifact, tmp_path / "armlib", edit)
    refused_everywhere(art, host_runtime, "its library is an aarch64 ELF file but manifest.json says x86_64",
                       "its library is an aarch64 ELF file", 5)


def test_library_that_is_not_elf(host_artifact, host_runtime, tmp_path):
    def edit(m, d):
        (d / "model.so").write_bytes(b"#!/bin/sh\necho hi\n" * 10)
        m["files"]["model.so"] = sha(d / "model.so")

    art = forge(host_artifact, tmp_path / "notelf", edit)
    refused_everywhere(art, host_runtime, "is not an ELF shared library", "is not an ELF shared library", 4)


# ---- the bytes that were checked are the bytes loaded --------------------------------------------------

def test_recompile_into_the_same_path_then_swap_loads_the_new_library(convnet_onnx, model_dir, tmp_path):
    """dlopen caches by file name: loading from the checked descriptor (a fresh name each time) gets the new code."""
    from compile import compile_model
    from targets import load_target
    from toolkit import runtime as py_runtime
    from toolkit.export import export_zoo_model

    out = tmp_path / "m"
    compile_model(convnet_onnx, load_target("host"), out, verify=False)
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    m = py_runtime.load(out)
    old = m.run({"x": x})["y"]
    v2 = export_zoo_model("convnet", model_dir / "convnet-seed5.onnx", seed=5)
    compile_model(v2, load_target("host"), out, verify=False)  # same -o: replaced in place
    m.swap(out)
    new = m.run({"x": x})["y"]
    assert not np.allclose(old, new, atol=1e-3), "swap kept the old library"
    fresh = py_runtime.load(out).run({"x": x})["y"]
    np.testing.assert_allclose(new, fresh, rtol=0, atol=0)


# ---- out-of-range token ids are refused by both runtimes ---------------------------------------------

@pytest.fixture(scope="module")
def transformer_artifact(transformer_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tr") / "transformer"
    run_cli("compile", transformer_onnx, "-o", out, check=True)
    return out


def test_manifest_records_the_embedding_range(transformer_artifact):
    m = json.loads((transformer_artifact / "manifest.json").read_text())
    assert m["index_bounds"] == {"ids": [-64, 63]}  # vocab 64; ONNX Gather accepts -64..63 as onnxruntime does


@pytest.mark.parametrize("bad", [64, -65, 1_000_000, 2**62])
def test_out_of_range_ids_are_refused(transformer_artifact, transformer_onnx, host_runtime, tmp_path, bad):
    from compile import UsageError
    from toolkit import runtime as py_runtime

    ids = np.zeros((1, 16), np.int64)
    ids[0, 5] = bad
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "out.npz"
    assert_user_error(run_cli("run", transformer_artifact, "--input", f"ids={tmp_path / 'ids.npy'}", "-o", out), 2,
                      f"holds {bad} at [0, 5]", "outside [-64, 63]")
    assert not out.exists()
    with pytest.raises(UsageError, match="outside"):
        py_runtime.load(transformer_artifact).run({"ids": ids})
    proc = runner(host_runtime, transformer_artifact, "--input", f"ids={tmp_path / 'ids.npy'}")
    assert proc.returncode == 2 and "outside [-64, 63]" in proc.stderr and proc.stderr.count("error:") == 1


def test_in_range_ids_match_onnxruntime_at_both_ends(transformer_artifact, transformer_onnx, host_runtime, tmp_path):
    import onnxruntime as ort

    from toolkit import native
    from toolkit import runtime as py_runtime

    ids = np.zeros((1, 16), np.int64)
    ids[0, :4] = [-64, -1, 0, 63]
    want = ort.InferenceSession(str(transformer_onnx), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(py_runtime.load(transformer_artifact).run({"ids": ids})["y"], want, atol=1e-5)
    got = native.run_artifact(transformer_artifact, {"ids": ids}, repeat=0, runtime_dir=host_runtime).outputs["y"]
    np.testing.assert_allclose(got, want, atol=1e-5)


def _gather_model(path: Path, index_type: int, cast_from_float: bool) -> Path:
    """Gather rows of an 8-row table by an int32 input, or by a float input cast to int64."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(8, 4), "W")
    nodes = [helper.make_node("Gather", ["W", "i" if cast_from_float else "ids"], ["y"])]
    if cast_from_float:
        nodes.insert(0, helper.make_node("Cast", ["ids"], ["i"], to=TensorProto.INT64))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", index_type, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [table])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_index_bounds_for_int32_ids_and_none_for_a_cast_float(tmp_path):
    from onnx import TensorProto

    from compile import UsageError, compile_model
    from targets import load_target
    from toolkit import runtime as py_runtime

    i32 = compile_model(_gather_model(tmp_path / "i32.onnx", TensorProto.INT32, False), load_target("host"),
                        tmp_path / "i32").manifest
    assert i32["index_bounds"] == {"ids": [-8, 7]}
    with pytest.raises(UsageError, match=r"holds 8 at \[2\]"):
        py_runtime.load(tmp_path / "i32").run({"ids": np.array([0, -8, 8], np.int32)})
    # a float input is not an index the toolkit can check (its cast truncates): compiled, nothing recorded
    f = compile_model(_gather_model(tmp_path / "f.onnx", TensorProto.FLOAT, True), load_target("host"), tmp_path / "f")
    assert f.manifest["index_bounds"] == {}


def test_aarch64_runner_under_qemu_refuses_out_of_range_ids(transformer_onnx, tmp_path):
    from compile.native import emulation_unavailable
    from toolkit import native

    why = emulation_unavailable("aarch64")
    if why:
        pytest.skip(why)
    out = tmp_path / "tr-rpi4"
    run_cli("compile", transformer_onnx, "-t", "rpi4", "-o", out, check=True)  # verified under qemu on the way
    ids = np.zeros((1, 16), np.int64)
    ids[0, 1] = 64
    with pytest.raises(native.NativeRuntimeError, match=r"outside \[-64, 63\]") as info:
        native.run_artifact(out, {"ids": ids}, emulate=True, repeat=0)
    assert info.value.kind == "UsageError"


# ---- compile -o replaces only an artifact of this toolkit, and only its own files ---------------------

def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_web_app_folder_with_a_manifest_is_left_alone(convnet_onnx, tmp_path):
    app = tmp_path / "webapp"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "my-pwa", "start_url": "/"}\n')
    (app / "README.md").write_text("my app\n")
    (app / "src" / "main.js").write_text("console.log(1)\n")
    before = _tree(app)
    assert_user_error(run_cli("compile", convnet_onnx, "-o", app), 2, "is not an artifact of this toolkit")
    assert _tree(app) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".webapp.")]


def test_artifact_with_a_user_file_added_is_left_alone(host_artifact, convnet_onnx, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(host_artifact, art)
    (art / "notes.txt").write_text("mine\n")
    before = _tree(art)
    assert_user_error(run_cli("compile", convnet_onnx, "-o", art), 2, "not the artifact's own")
    assert _tree(art) == before


def test_output_is_the_current_directory(convnet_onnx, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(convnet_onnx, project / "model.onnx")
    (project / "main.py").write_text("print('app')\n")
    before = _tree(project)
    for out in (".", str(project)):
        proc = subprocess.run([str(Path(sys.executable).parent / "autoglm"), "compile", "model.onnx", "-o", out],
                              cwd=project, capture_output=True, text=True, timeout=120)
        assert_user_error(proc, 2, "is the current directory")
    assert _tree(project) == before


def test_output_that_is_a_file_or_a_link(host_artifact, convnet_onnx, tmp_path):
    f = tmp_path / "file"
    f.write_text("data\n")
    assert_user_error(run_cli("compile", convnet_onnx, "-o", f), 2, "is a file")
    assert f.read_text() == "data\n"
    link = tmp_path / "link"
    os.symlink(host_artifact, link)
    assert_user_error(run_cli("compile", convnet_onnx, "-o", link), 2, "is a symbolic link")
    assert os.readlink(link) == str(host_artifact)


def test_python_api_refuses_too(convnet_onnx, tmp_path):
    from compile import UsageError, compile_model
    from targets import load_target

    app = tmp_path / "app"
    app.mkdir()
    (app / "index.html").write_text("<html></html>\n")
    with pytest.raises(UsageError, match="not an artifact of this toolkit"):
        compile_model(convnet_onnx, load_target("host"), app, verify=False)
    assert _tree(app) == {"index.html": b"<html></html>\n"}


def test_own_artifact_is_replaced_and_old_format_too(host_artifact, convnet_onnx, tmp_path):
    """An artifact of this toolkit, this format or format 1 (before the manifest digest), is replaced whole."""
    art = tmp_path / "old"
    shutil.copytree(host_artifact, art)
    (art / "manifest.json.sha256").unlink()
    m = json.loads((art / "manifest.json").read_text())
    m["format_version"] = 1
    (art / "manifest.json").write_text(json.dumps(m))
    run_cli("compile", convnet_onnx, "-o", art, "--no-verify", check=True)
    assert json.loads((art / "manifest.json").read_text())["format_version"] == 2
    assert set(_tree(art)) == {"manifest.json", "manifest.json.sha256", "model.so", "prepared.onnx"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".old.")]


def test_failed_compile_removes_the_parents_it_created(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a model\n" * 20)
    out = tmp_path / "a" / "b" / "c" / "out"
    proc = run_cli("compile", bogus, "-o", out)
    assert_user_error(proc, 2, "neither a TFLite file nor a readable ONNX model")
    assert not (tmp_path / "a").exists()
    assert_nothing_written(out)


def test_artifact_files_follow_the_umask(convnet_onnx, host_artifact, tmp_path):
    """Others can read an artifact (mkstemp's 0600 is not kept); with umask 077 only the owner can."""
    for name in ("manifest.json", "manifest.json.sha256", "model.so", "prepared.onnx"):
        assert (host_artifact / name).stat().st_mode & 0o044 == 0o044, name
    out = tmp_path / "private"
    old = os.umask(0o077)
    try:
        run_cli("compile", convnet_onnx, "-o", out, "--no-verify", check=True)
    finally:
        os.umask(old)
    assert all(p.stat().st_mode & 0o077 == 0 for p in [out, *out.iterdir()])
    if os.geteuid() == 0 and shutil.which("setpriv"):
        # another user runs the artifact root compiled with the default umask (pytest's tmp dirs are 0700)
        shared = Path(tempfile.mkdtemp(prefix="autoglm-shared-", dir="/tmp"))
        try:
            os.chmod(shared, 0o755)
            shutil.copytree(host_artifact, shared / "art")
            env = {**os.environ, "HOME": "/tmp", "AUTOGLM_CACHE_DIR": "/tmp/autoglm-nobody-cache"}
            proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                   str(Path(sys.executable).parent / "autoglm"), "run", str(shared / "art"), "--random"],
                                  capture_output=True, text=True, env=env, timeout=120)
            assert proc.returncode == 0, proc.stderr
        finally:
            shutil.rmtree(shared)


def test_python_api_refuses_escaping_external_data(tmp_path):
    """compile_model itself (not only the CLI) checks an ONNX file's external-data paths before onnx follows them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import targets
    from compile import ModelFormatError, compile_model

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    path = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, location="w.bin", size_threshold=0)
    m = onnx.load(str(path), load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../../etc/hostname"
    onnx.save(m, str(path))
    with pytest.raises(ModelFormatError, match="tensor 'W'"):
        compile_model(path, targets.load_target("host"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_outputs_follow_the_umask(host_artifact, tmp_path):
    """`run -o` and `bench --json` results are ordinary files of the user's umask, not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        run_cli("run", host_artifact, "--random", "-o", tmp_path / "out.npz", check=True)
    finally:
        os.umask(old)
    assert (tmp_path / "out.npz").stat().st_mode & 0o777 == 0o644


# ---- every indexing kernel stays inside its table, whatever index reaches it ----------------------------

INDEXING_OPS = ["Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND"]
FAR_K = (10**6, -(10**6))


def _indexing_model(path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Each of INDEXING_OPS on one 4x6 table `x`, its indices `ids_<op> * k`: an index the input check cannot bound
    (a Mul). One model (one compile) for all five; op `op` writes output `y_<op>` from inputs `ids_<op>` (`u_<op>`)."""
    import onnx
    from onnx import TensorProto as T, helper

    nodes = []
    inputs = [helper.make_tensor_value_info("x", T.FLOAT, [4, 6]), helper.make_tensor_value_info("k", T.INT64, [1])]
    outputs = []
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((4, 6)).astype(np.float32), "k": np.array([1], np.int64)}
    for op in INDEXING_OPS:
        ids_shape, extra, out_shape = {
            "Gather": ([3], [], [3, 6]),
            "GatherElements": ([4, 2], [], [4, 2]),
            "GatherND": ([3, 2], [], [3]),
            "ScatterElements": ([4, 2], [(f"u_{op}", [4, 2])], [4, 6]),
            "ScatterND": ([2, 2], [(f"u_{op}", [2])], [4, 6]),
        }[op]
        attrs = {"axis": 1} if op in ("GatherElements", "ScatterElements") else {}
        nodes += [helper.make_node("Mul", [f"ids_{op}", "k"], [f"i_{op}"]),
                  helper.make_node(op, ["x", f"i_{op}", *[n for n, _ in extra]], [f"y_{op}"], **attrs)]
        inputs += [helper.make_tensor_value_info(f"ids_{op}", T.INT64, ids_shape),
                   *[helper.make_tensor_value_info(n, T.FLOAT, s) for n, s in extra]]
        outputs.append(helper.make_tensor_value_info(f"y_{op}", T.FLOAT, out_shape))
        ids = {"Gather": [-4, 0, 3], "GatherElements": [[-6, 5], [0, 1], [2, -1], [3, 4]],
               "GatherND": [[-1, 0], [3, -6], [2, 5]], "ScatterElements": [[-1, 0], [5, 2], [1, 3], [4, -6]],
               "ScatterND": [[-1, 0], [3, -6]]}[op]
        feed[f"ids_{op}"] = np.array(ids, np.int64)
        feed.update({n: np.ones(s, np.float32) for n, s in extra})
    g = helper.make_graph(nodes, "indexing", inputs, outputs)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, feed


@pytest.fixture(scope="module")
def indexing_runs(host_runtime, tmp_path_factory):
    """The five-op model compiled once and run by `autoglm run` with k = 1, 10**6 and -10**6, and by the C++ runner
    with the two far ones; onnxruntime's outputs for k = 1. Each test below checks its own op's output."""
    import onnxruntime as ort

    from compile import compile_model
    from targets import load_target
    from toolkit import native

    d = tmp_path_factory.mktemp("indexing")
    model, feed = _indexing_model(d / "indexing.onnx")
    art = compile_model(model, load_target("host"), d / "art", verify=False).artifact
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    for name, arr in feed.items():
        np.save(d / f"{name}.npy", arr)
    args = [a for n in feed for a in ("--input", f"{n}={d / (n + '.npy')}")]

    def cli(out: Path):
        proc = run_cli("run", art, *args, "-o", out)
        if proc.returncode != 0:
            return proc, None
        with np.load(out) as z:
            return proc, dict(z)

    runs = {1: cli(d / "ok.npz") + (None,)}
    # k = 10**6 (and -10**6): every index far outside; onnxruntime refuses, ours must neither crash nor read outside
    for k in FAR_K:
        np.save(d / "k.npy", np.array([k], np.int64))
        try:
            cpp = native.run_artifact(art, {**feed, "k": np.array([k], np.int64)}, repeat=0,
                                      runtime_dir=host_runtime).outputs
        except native.NativeRuntimeError as exc:
            cpp = exc
        runs[k] = cli(d / f"far{k}.npz") + (cpp,)
    return feed, want, runs


@pytest.mark.parametrize("op", INDEXING_OPS)
def test_computed_indices_are_clamped_inside_the_table(op, indexing_runs):
    """In range (negative ones too) the kernel matches onnxruntime; far out of range it stays inside the table."""
    feed, want, runs = indexing_runs
    y = f"y_{op}"
    proc, outs, _ = runs[1]
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(outs[y], want[y], atol=1e-6)
    for k in FAR_K:
        proc, outs, cpp = runs[k]
        assert proc.returncode == 0, proc.stderr
        got = outs[y]
        assert np.isfinite(got).all()
        if op.startswith("Gather"):  # clamped to the first or last entry of its axis: values of the table itself
            assert np.isin(got, feed["x"]).all()
        if isinstance(cpp, Exception):
            raise cpp
        np.testing.assert_array_equal(cpp[y], got)


def test_gather_nd_over_equal_axes_records_its_range(tmp_path):
    """An N-d index whose axes are all of one length is checked at the input, like an embedding id."""
    import onnx
    from onnx import TensorProto as T, helper

    from compile import UsageError, compile_model
    from targets import load_target
    from toolkit import runtime as py_runtime

    g = helper.make_graph([helper.make_node("GatherND", ["x", "ids"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, [5, 5, 3]),
                           helper.make_tensor_value_info("ids", T.INT64, [4, 2])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [4, 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    res = compile_model(tmp_path / "g.onnx", load_target("host"), tmp_path / "art", verify=False)
    assert res.manifest["index_bounds"] == {"ids": [-5, 4]}
    with pytest.raises(UsageError, match=r"holds 5 at \[3, 1\]"):
        py_runtime.load(res.artifact).run({"x": np.zeros((5, 5, 3), np.float32),
                                           "ids": np.array([[0, 0], [4, 4], [-5, -1], [1, 5]], np.int64)})
