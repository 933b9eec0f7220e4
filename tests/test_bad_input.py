"""Every kind of bad input: one line, the right exit code, no traceback, nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import AUTOGLM, assert_nothing_written, assert_user_error, run_cli, tampered_copy


def test_missing_model_file(tmp_path):
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", tmp_path / "nope.onnx", "-o", out), 2, "does not exist")
    assert_nothing_written(out)


def test_file_that_is_not_a_model(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not a neural network\n" * 20)
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", bogus, "-o", out), 2, "neither a TFLite file nor a readable ONNX model")
    assert_nothing_written(out)


def test_truncated_onnx(convnet_onnx, tmp_path):
    data = convnet_onnx.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", cut, "-o", out), 2, "cut.onnx", "truncated or corrupt")
    assert_nothing_written(out)


def test_truncated_tflite(small_tflite, tmp_path):
    data = small_tflite.read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[:64])
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", cut, "-o", out), 2, "cut.tflite", "truncated or corrupt")
    assert_nothing_written(out)


class _Det(torch.nn.Module):
    """ONNX `Det`: an operator TVM 0.27's importer has no converter for (LSTM/GRU the toolkit now converts itself)."""

    def forward(self, x):
        return torch.linalg.det(x)


def test_operator_tvm_cannot_import(tmp_path):
    path = tmp_path / "det.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Det().eval(), (torch.randn(2, 3, 3),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", path, "-o", out), 1, "cannot import", "Det (node '")
    assert_nothing_written(out)


def test_unknown_target_lists_closest(convnet_onnx, tmp_path):
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", convnet_onnx, "--target", "rpi44", "-o", out), 2, "unknown target 'rpi44'", "rpi4")
    assert_nothing_written(out)


def test_missing_cross_compiler_names_the_package(convnet_onnx, tmp_path):
    tdir = tmp_path / "targets"
    tdir.mkdir()
    text = (Path(__file__).parent.parent / "targets" / "rpi4.toml").read_text()
    text = text.replace('name = "rpi4"', 'name = "oddboard"').replace(
        'cross_compiler = "aarch64-linux-gnu-g++"', 'cross_compiler = "aarch64-oddvendor-linux-g++"').replace(
        'cross_compiler_package = "g++-aarch64-linux-gnu"', 'cross_compiler_package = "g++-aarch64-oddvendor"')
    (tdir / "oddboard.toml").write_text(text)
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", convnet_onnx, "--target", "oddboard", "--targets-dir", tdir, "-o", out), 1,
                      "aarch64-oddvendor-linux-g++", "apt-get install g++-aarch64-oddvendor")
    assert_nothing_written(out)


def test_invalid_target_file(convnet_onnx, tmp_path):
    (tmp_path / "broken.toml").write_text('name = "broken"\narch = "mips"\n')
    assert_user_error(run_cli("targets", "--targets-dir", tmp_path), 2, "broken.toml", "missing required key")


def test_targets_refuses_a_cpu_llvm_does_not_know(tmp_path):
    (tmp_path / "odd.toml").write_text(RPI4.replace('name = "rpi4"', 'name = "odd"').replace("cortex-a72", "cortex-a999"))
    assert_user_error(run_cli("targets", "--targets-dir", tmp_path), 2, "odd.toml", "mcpu 'cortex-a999'", "did you mean")


def test_bad_input_shape_flag(convnet_onnx, tmp_path):
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", convnet_onnx, "--input-shape", "x=1,three", "-o", out), 2, "NAME=D0,D1")
    assert_user_error(run_cli("compile", convnet_onnx, "--input-shape", "image=1,3,32,32", "-o", out), 2,
                      "names image", "inputs are: x")
    assert_user_error(run_cli("compile", convnet_onnx, "--input-shape", "x=1,3,64,64", "-o", out), 2, "conflicts")
    assert_nothing_written(out)


def test_output_path_that_is_not_an_artifact_is_left_alone(convnet_onnx, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "data.txt").write_text("keep me")
    assert_user_error(run_cli("compile", convnet_onnx, "-o", out), 2, "not an artifact")
    assert (out / "data.txt").read_text() == "keep me"


@pytest.mark.parametrize("case,fragments", [
    ("name", ("unknown input 'image'", "inputs are: x")),
    ("shape", ("input 'x' has shape [1, 3, 16, 16]", "expects [1, 3, 32, 32]")),
    ("dtype", ("input 'x' has dtype float64", "expects float32")),
])
def test_run_rejects_wrong_inputs(host_artifact, tmp_path, case, fragments):
    arr = {"name": np.zeros((1, 3, 32, 32), np.float32), "shape": np.zeros((1, 3, 16, 16), np.float32),
           "dtype": np.zeros((1, 3, 32, 32), np.float64)}[case]
    np.save(tmp_path / "in.npy", arr)
    name = "image" if case == "name" else "x"
    out = tmp_path / "out.npz"
    assert_user_error(run_cli("run", host_artifact, "--input", f"{name}={tmp_path / 'in.npy'}", "-o", out), 2, *fragments)
    assert not out.exists()


def test_run_needs_inputs_or_random(host_artifact):
    assert_user_error(run_cli("run", host_artifact), 2, "--random")


def test_run_input_file_not_npy(host_artifact, tmp_path):
    (tmp_path / "x.npy").write_text("garbage")
    assert_user_error(run_cli("run", host_artifact, "--input", f"x={tmp_path / 'x.npy'}"), 2, "is not a .npy file")


def test_tampered_artifact_is_refused(host_artifact, tmp_path):
    copy = tampered_copy(host_artifact, tmp_path / "tampered")
    assert_user_error(run_cli("run", copy, "--random"), 1, "model.so does not match its checksum")
    from compile import ArtifactError
    from toolkit import runtime

    with pytest.raises(ArtifactError, match="checksum"):
        runtime.load(copy)
    inspected = run_cli("inspect", copy)
    assert "FAILED" in inspected.stdout
    assert_user_error(inspected, 1, "model.so does not match its checksum")


def test_artifact_for_another_architecture_is_refused(convnet_onnx, tmp_path):
    if not shutil.which("aarch64-linux-gnu-g++"):
        pytest.skip("aarch64-linux-gnu-g++ not installed: apt-get install g++-aarch64-linux-gnu")
    out = tmp_path / "rpi4"
    run_cli("compile", convnet_onnx, "--target", "rpi4", "-o", out, check=True)
    assert_user_error(run_cli("run", out, "--random"), 1, "built for aarch64", "--device qemu")


def test_verify_on_a_target_that_cannot_run_here(convnet_onnx, tmp_path):
    out = tmp_path / "out"
    # jetson-orin: a CUDA target, which compile never runs here (not even on a machine with a GPU), so --verify
    # is refused before anything is built
    assert_user_error(run_cli("compile", convnet_onnx, "--target", "jetson-orin", "--verify", "-o", out), 2,
                      "cannot run here", "jetson-orin")
    assert_nothing_written(out)


def test_manifest_edit_is_refused(host_artifact, tmp_path):
    copy = tmp_path / "edited"
    shutil.copytree(host_artifact, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["files"]["model.so"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(m))
    assert_user_error(run_cli("run", copy, "--random"), 1, "checksum")


# ---- the bad-input corpus ------------------------------------------------------------------------------
#
# Each case builds what it needs in a directory of its own, runs the real `autoglm` once and checks: one
# `error:` line holding the fragments, the exit code, no traceback, and that nothing was written or deleted
# (the case's directory, the shared artifact and the results database are byte-for-byte as before). The
# cases run two at a time in a module fixture (each CLI start costs ~0.5 s); each is its own test.

ROOT = Path(__file__).resolve().parent.parent
RPI4 = (ROOT / "targets" / "rpi4.toml").read_text()


@dataclass(frozen=True)
class Ctx:
    d: Path          # the case's own directory
    art: Path        # a shared, valid host artifact (never modified)
    onnx: Path       # a valid ONNX model
    tflite: Path


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Ctx], list]
    code: int
    fragments: tuple[str, ...]
    cwd: bool = False  # run inside the case's directory


def _snapshot(root: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for p in sorted(root.rglob("*")) if root.exists() else []:
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
        elif p.is_dir():
            out[rel] = ("dir", "")
        else:
            out[rel] = ("other", "")
    return out


def _npy(c: Ctx, arr, name="x.npy") -> Path:
    np.save(c.d / name, arr, allow_pickle=True)
    return c.d / name


def _copy(c: Ctx, name="art") -> Path:
    shutil.copytree(c.art, c.d / name)
    return c.d / name


def _reforge(art: Path, edit) -> Path:
    """Edit the manifest and recompute its digest: the edit reaches the field checks."""
    m = json.loads((art / "manifest.json").read_text())
    edit(m)
    data = (json.dumps(m, indent=2) + "\n").encode()
    (art / "manifest.json").write_bytes(data)
    (art / "manifest.json.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  manifest.json\n")
    return art


def _target(c: Ctx, name: str, text: str) -> Path:
    tdir = c.d / "targets"
    tdir.mkdir(exist_ok=True)
    (tdir / f"{name}.toml").write_bytes(text.encode() if isinstance(text, str) else text)
    return tdir


def _ext_onnx(c: Ctx, location: str | None, write_data: bool = True) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = c.d / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    if location is not None or not write_data:
        m = onnx.load(str(path), load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location" and location is not None:
                    e.value = location
        onnx.save(m, str(path))
    if not write_data:
        (c.d / "w.bin").unlink()
    return path


def _newer_opset_onnx(c: Ctx) -> Path:
    """A model TVM imports but onnxruntime refuses (an opset newer than it knows)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 30)])
    model.ir_version = 10
    onnx.save(model, str(c.d / "new.onnx"))
    return c.d / "new.onnx"


def _sqlite_other(c: Ctx) -> Path:
    p = c.d / "other.db"
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE notes (t TEXT)")
    conn.commit()
    conn.close()
    return p


def _file(c: Ctx, name: str, data: bytes | str = b"data\n") -> Path:
    p = c.d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _corrupt_db(c: Ctx) -> Path:
    """A tuning database whose lines are valid JSON that TVM cannot parse as workloads and records."""
    _file(c, "db/database_workload.json", '["not-a-workload", "x"]\n')
    _file(c, "db/database_tuning_record.json", '[0, [1, 2, 3]]\n')
    return c.d / "db"


X = (1, 3, 32, 32)
CASES = [
    # compile: the model file
    Case("compile-missing-model", lambda c: ["compile", c.d / "nope.onnx", "-o", c.d / "out"], 2, ("does not exist",)),
    Case("compile-text-as-model", lambda c: ["compile", _file(c, "m.onnx", "hello\n" * 30), "-o", c.d / "out"], 2,
         ("neither a TFLite file nor a readable ONNX model",)),
    Case("compile-empty-model", lambda c: ["compile", _file(c, "e.onnx", b""), "-o", c.d / "out"], 2, ("e.onnx",)),
    Case("compile-directory-as-model", lambda c: ["compile", c.d, "-o", c.d / "out"], 2, ("is a directory",)),
    Case("compile-truncated-onnx", lambda c: ["compile", _file(c, "t.onnx", c.onnx.read_bytes()[:300]), "-o", c.d / "out"],
         2, ("truncated or corrupt",)),
    Case("compile-truncated-tflite", lambda c: ["compile", _file(c, "t.tflite", c.tflite.read_bytes()[:100]), "-o",
                                                c.d / "out"], 2, ("truncated or corrupt",)),
    Case("compile-external-data-missing", lambda c: ["compile", _ext_onnx(c, None, write_data=False), "-o", c.d / "out"],
         2, ("tensor 'W'", "does not exist")),
    Case("compile-external-data-escapes", lambda c: ["compile", _ext_onnx(c, "../../etc/hostname"), "-o", c.d / "out"],
         2, ("outside the model's directory",)),
    Case("compile-external-data-absolute", lambda c: ["compile", _ext_onnx(c, "/etc/hostname"), "-o", c.d / "out"], 2,
         ("outside the model's directory",)),
    Case("compile-reference-cannot-run", lambda c: ["compile", _newer_opset_onnx(c), "-o", c.d / "out"], 1,
         ("the reference runtime could not run", "--no-verify")),
    # compile: flags
    Case("compile-unknown-target", lambda c: ["compile", c.onnx, "-t", "rpi44", "-o", c.d / "out"], 2, ("did you mean",)),
    Case("compile-target-wrong-case", lambda c: ["compile", c.onnx, "-t", "RPI4", "-o", c.d / "out"], 2,
         ("did you mean rpi4",)),
    Case("compile-shape-syntax", lambda c: ["compile", c.onnx, "--input-shape", "x=1,a", "-o", c.d / "out"], 2,
         ("NAME=D0,D1",)),
    Case("compile-shape-unknown-input", lambda c: ["compile", c.onnx, "--input-shape", "y=1,3,32,32", "-o", c.d / "out"],
         2, ("inputs are: x",)),
    Case("compile-shape-repeated", lambda c: ["compile", c.onnx, "--input-shape", "x=1,3,32,32", "--input-shape",
                                              "x=1,3,64,64", "-o", c.d / "out"], 2, ("given twice for 'x'",)),
    Case("compile-seed-negative", lambda c: ["compile", c.onnx, "--seed", "-1", "-o", c.d / "out"], 2, ("--seed -1",)),
    Case("compile-seed-not-a-number", lambda c: ["compile", c.onnx, "--seed", "x", "-o", c.d / "out"], 2,
         ("--seed", "compile --help")),
    Case("compile-atol-negative", lambda c: ["compile", c.onnx, "--atol", "-1", "-o", c.d / "out"], 2, ("--atol -1",)),
    Case("compile-atol-nan", lambda c: ["compile", c.onnx, "--atol", "nan", "-o", c.d / "out"], 2, ("--atol nan",)),
    Case("compile-rtol-inf", lambda c: ["compile", c.onnx, "--rtol", "inf", "-o", c.d / "out"], 2, ("--rtol inf",)),
    Case("compile-tuning-db-file", lambda c: ["compile", c.onnx, "--tuning-db", _file(c, "db.json"), "-o", c.d / "out"], 2,
         ("is a file",)),
    Case("compile-tuning-db-missing", lambda c: ["compile", c.onnx, "--tuning-db", c.d / "nodb", "-o", c.d / "out"], 2,
         ("does not exist",)),
    Case("compile-tuning-db-corrupt", lambda c: ["compile", c.onnx, "--tuning-db", _corrupt_db(c), "-o", c.d / "out"], 1,
         ("tuning database", "is corrupt", "another --db")),
    Case("compile-unknown-option", lambda c: ["compile", c.onnx, "--nope", "-o", c.d / "out"], 2, ("No such option",)),
    Case("compile-missing-output", lambda c: ["compile", c.onnx], 2, ("Missing option",)),
    Case("compile-missing-model-argument", lambda c: ["compile"], 2, ("Missing argument",)),
    Case("compile-verify-gpu-target", lambda c: ["compile", c.onnx, "-t", "nvidia-a100", "--verify", "-o", c.d / "out"],
         2, ("cannot run here",)),
    # compile: the output location
    Case("compile-output-is-a-file", lambda c: ["compile", c.onnx, "-o", _file(c, "out")], 2, ("is a file",)),
    Case("compile-output-dot", lambda c: ["compile", c.onnx, "-o", "."], 2, ("current directory",), cwd=True),
    Case("compile-output-link", lambda c: (os.symlink(c.art, c.d / "ln"), ["compile", c.onnx, "-o", c.d / "ln"])[1], 2,
         ("symbolic link",)),
    Case("compile-output-foreign-dir", lambda c: (_file(c, "app/index.html"), ["compile", c.onnx, "-o", c.d / "app"])[1],
         2, ("not an artifact of this toolkit",)),
    Case("compile-output-foreign-manifest", lambda c: (_file(c, "pwa/manifest.json", '{"name": "app"}'),
                                                       ["compile", c.onnx, "-o", c.d / "pwa"])[1], 2,
         ("not an artifact of this toolkit",)),
    Case("compile-output-name-too-long", lambda c: ["compile", c.onnx, "-o", c.d / ("n" * 250)], 2, ("too long",)),
    Case("compile-output-under-a-file", lambda c: ["compile", c.onnx, "-o", _file(c, "f") / "sub"], 2,
         ("is a file, not a directory",)),
    Case("compile-output-read-only", lambda c: ["compile", c.onnx, "-o", "/sys/autoglm-out"], 2, ("cannot create files",)),
    # target files
    Case("target-dir-missing", lambda c: ["targets", "--targets-dir", c.d / "none"], 2, ("does not exist",)),
    Case("target-bad-toml", lambda c: ["targets", "--targets-dir", _target(c, "b", "name = \n")], 2, ("not valid TOML",)),
    Case("target-bad-bytes", lambda c: ["targets", "--targets-dir", _target(c, "b", b'name = "b"\n\xff\xfe = 1\n')], 2,
         ("not UTF-8",)),
    Case("target-threads-bool", lambda c: ["targets", "--targets-dir", _target(c, "b", RPI4.replace('"rpi4"', '"b"', 1)
                                                                              .replace("threads = 4", "threads = true"))],
         2, ("'threads' must be an integer",)),
    Case("target-mattr-string", lambda c: ["targets", "--targets-dir", _target(c, "b", RPI4.replace('"rpi4"', '"b"', 1)
                                                                              .replace('["+neon"]', '"+neon"'))],
         2, ("'mattr' must be a list",)),
    Case("target-missing-key", lambda c: ["targets", "--targets-dir", _target(c, "b", 'name = "b"\narch = "mips"\n')], 2,
         ("missing required key",)),
    Case("target-unknown-key", lambda c: ["targets", "--targets-dir", _target(c, "b", 'colour = "red"\n' + RPI4.replace(
        '"rpi4"', '"b"', 1))], 2, ("unknown keys",)),
    Case("target-bad-arch", lambda c: ["targets", "--targets-dir", _target(c, "b", RPI4.replace('"rpi4"', '"b"', 1)
                                                                          .replace('"aarch64"', '"mips"', 1))], 2,
         ("arch must be one of",)),
    Case("target-name-mismatch", lambda c: ["targets", "--targets-dir", _target(c, "other", RPI4)], 2,
         ("must match the file name",)),
    Case("target-unknown-mcpu", lambda c: ["compile", c.onnx, "-t", "b", "--targets-dir",
                                           _target(c, "b", RPI4.replace('"rpi4"', '"b"', 1).replace("cortex-a72", "cortex-a999")),
                                           "-o", c.d / "out"], 2, ("mcpu 'cortex-a999' is not a CPU LLVM knows",)),
    # export
    Case("export-unknown-model", lambda c: ["export", "nosuch", "-o", c.d / "m.onnx"], 2, ("unknown built-in model",)),
    Case("export-output-directory", lambda c: ["export", "convnet", "-o", c.d], 2, ("is a directory",)),
    Case("export-name-and-arch", lambda c: ["export", "convnet", "--arch", _file(c, "a.json", "{}"), "-o", c.d / "m.onnx"],
         2, ("not both",)),
    Case("export-seed-negative", lambda c: ["export", "convnet", "--seed", "-3", "-o", c.d / "m.onnx"], 2, ("--seed -3",)),
    # run: the artifact
    Case("run-missing-artifact", lambda c: ["run", c.d / "none", "--random"], 2, ("does not exist",)),
    Case("run-file-as-artifact", lambda c: ["run", _file(c, "a"), "--random"], 1, ("is a file",)),
    Case("run-dir-without-manifest", lambda c: ["run", c.d, "--random"], 1, ("not an artifact directory",)),
    Case("run-tampered-library", lambda c: ["run", tampered_copy(c.art, c.d / "t"), "--random"], 1,
         ("does not match its checksum",)),
    Case("run-manifest-edited", lambda c: (_edit_text(_copy(c), '"fp32"', '"int8"'), ["run", c.d / "art", "--random"])[1],
         1, ("manifest.json does not match its checksum in manifest.json.sha256",)),
    Case("run-digest-missing", lambda c: ((_copy(c) / "manifest.json.sha256").unlink(), ["run", c.d / "art", "--random"])[1],
         1, ("has no manifest.json.sha256",)),
    Case("run-manifest-huge", lambda c: (_copy(c), _write_digested(c.d / "art", b" " * (17 << 20) + b"{}"),
                                         ["run", c.d / "art", "--random"])[-1], 1, ("larger than 16 MiB",)),
    Case("run-manifest-deep", lambda c: (_copy(c), _write_digested(c.d / "art", b"[" * 100000 + b"]" * 100000),
                                         ["run", c.d / "art", "--random"])[-1], 1, ("manifest.json is corrupt",)),
    Case("run-manifest-duplicate-key", lambda c: (_edit_text(_copy(c), '"library": "model.so",',
                                                             '"library": "model.so", "library": "/bin/true",', True),
                                                  ["run", c.d / "art", "--random"])[1], 1, ("duplicate key 'library'",)),
    Case("run-manifest-corrupt-json", lambda c: (_copy(c), _write_digested(c.d / "art", b"{not json"),
                                                 ["run", c.d / "art", "--random"])[-1], 1, ("manifest.json is corrupt",)),
    Case("run-manifest-not-utf8", lambda c: (_copy(c), _write_digested(c.d / "art", b'{"a": "\xff"}'),
                                             ["run", c.d / "art", "--random"])[-1], 1, ("manifest.json is corrupt",)),
    Case("run-manifest-a-list", lambda c: (_copy(c), _write_digested(c.d / "art", b"[1, 2]"),
                                           ["run", c.d / "art", "--random"])[-1], 1, ("must be an object",)),
    Case("run-manifest-no-inputs", lambda c: ["run", _reforge(_copy(c), lambda m: m.pop("inputs")), "--random"], 1,
         ("lacks the field 'inputs'",)),
    Case("run-manifest-no-target", lambda c: ["run", _reforge(_copy(c), lambda m: m.pop("target")), "--random"], 1,
         ("lacks the field 'target'",)),
    Case("run-manifest-threads-string", lambda c: ["run", _reforge(_copy(c), lambda m: m["target"].update(threads="4")),
                                                   "--random"], 1, ("'target.threads' must be an integer",)),
    Case("run-manifest-shape-negative", lambda c: ["run", _reforge(_copy(c), lambda m: m["inputs"][0].update(shape=[-1])),
                                                   "--random"], 1, ("'inputs[0].shape'",)),
    Case("run-manifest-unknown-dtype", lambda c: ["run", _reforge(_copy(c), lambda m: m["inputs"][0].update(dtype="qint4")),
                                                  "--random"], 1, ("'inputs[0].dtype'",)),
    Case("run-manifest-library-number", lambda c: ["run", _reforge(_copy(c), lambda m: m.update(library=5)), "--random"],
         1, ("'library' must be a string",)),
    Case("run-manifest-files-list", lambda c: ["run", _reforge(_copy(c), lambda m: m.update(files=["model.so"])),
                                               "--random"], 1, ("'files' must be an object",)),
    Case("run-manifest-verification-bad", lambda c: ["run", _reforge(_copy(c), lambda m: m["verification"].update(
        passed="yes")), "--random"], 1, ("'verification.passed'",)),
    Case("run-manifest-format-3", lambda c: ["run", _reforge(_copy(c), lambda m: m.update(format_version=3)), "--random"],
         1, ("has artifact format 3",)),
    Case("run-manifest-bounds-bad", lambda c: ["run", _reforge(_copy(c), lambda m: m.update(index_bounds={"x": [0, 1]})),
                                               "--random"], 1, ("'index_bounds.x'",)),
    Case("run-library-missing", lambda c: ((_copy(c) / "model.so").unlink(), ["run", c.d / "art", "--random"])[1], 1,
         ("model.so is listed in manifest.json but missing",)),
    Case("run-library-escapes", lambda c: ["run", _reforge(_copy(c), lambda m: m.update(library="../art/model.so")),
                                           "--random"], 1, ("'..' part",)),
    Case("run-library-absolute", lambda c: ["run", _reforge(_copy(c), lambda m: m.update(library="/bin/true")), "--random"],
         1, ("is an absolute path",)),
    Case("run-library-symlink", lambda c: (_copy(c), (c.d / "art" / "model.so").rename(c.d / "real.so"),
                                           os.symlink(c.d / "real.so", c.d / "art" / "model.so"),
                                           ["run", c.d / "art", "--random"])[-1], 1, ("is a symbolic link",)),
    # run: the inputs
    Case("run-no-inputs", lambda c: ["run", c.art], 2, ("--random",)),
    Case("run-input-and-random", lambda c: ["run", c.art, "--random", "--input", "x=a.npy"], 2, ("not both",)),
    Case("run-input-syntax", lambda c: ["run", c.art, "--input", "x"], 2, ("is not NAME=FILE.npy",)),
    Case("run-input-unknown-name", lambda c: ["run", c.art, "--input", f"z={_npy(c, np.zeros(X, np.float32))}"], 2,
         ("unknown input 'z'",)),
    Case("run-input-wrong-shape", lambda c: ["run", c.art, "--input", f"x={_npy(c, np.zeros((1, 3), np.float32))}"], 2,
         ("has shape [1, 3]",)),
    Case("run-input-wrong-dtype", lambda c: ["run", c.art, "--input", f"x={_npy(c, np.zeros(X, np.int32))}"], 2,
         ("has dtype int32",)),
    Case("run-input-big-endian", lambda c: ["run", c.art, "--input", f"x={_npy(c, np.zeros(X, '>f4'))}"], 2,
         ("has dtype >f4",)),
    Case("run-input-text-file", lambda c: ["run", c.art, "--input", f"x={_file(c, 'x.npy', 'garbage')}"], 2,
         ("is not a .npy file",)),
    Case("run-input-missing-file", lambda c: ["run", c.art, "--input", f"x={c.d / 'none.npy'}"], 2, ("does not exist",)),
    Case("run-input-directory", lambda c: ["run", c.art, "--input", f"x={c.d}"], 2, ("is a directory",)),
    Case("run-input-truncated", lambda c: ["run", c.art, "--input", f"x={_file(c, 'x.npy', _npy_bytes(np.zeros(X, np.float32))[:500])}"],
         2, ("is truncated",)),
    Case("run-input-huge-header-shape", lambda c: ["run", c.art, "--input", f"x={_file(c, 'x.npy', _npy_header('<f4', (10**9, 10**9)))}"],
         2, ("header declares", "at most 2 GiB")),
    Case("run-input-pickled", lambda c: ["run", c.art, "--input", f"x={_npy(c, np.array([{'a': 1}], dtype=object))}"], 2,
         ("objects",)),
    Case("run-input-strings", lambda c: ["run", c.art, "--input", f"x={_npy(c, np.array(['a', 'b']))}"], 2, ("<U1",)),
    Case("run-input-npz-many", lambda c: (np.savez(c.d / "a.npz", x=np.zeros(X, np.float32), y=np.zeros(2)),
                                          ["run", c.art, "--input", f"x={c.d / 'a.npz'}"])[1], 2, ("of 2 arrays", "'x', 'y'")),
    Case("run-input-npz-no-key", lambda c: (np.savez(c.d / "a.npz", x=np.zeros(X, np.float32)),
                                            ["run", c.art, "--input", f"x={c.d / 'a.npz'}:nope"])[1], 2,
         ("has no array 'nope'",)),
    Case("run-input-npz-corrupt", lambda c: ["run", c.art, "--input", f"x={_file(c, 'a.npz', b'PK' + bytes(range(256)))}"],
         2, ("not a readable .npz archive",)),
    Case("run-input-repeated", lambda c: ["run", c.art, "--input", f"x={_npy(c, np.zeros(X, np.float32))}", "--input",
                                          f"x={c.d / 'x.npy'}"], 2, ("given twice for 'x'",)),
    Case("run-seed-negative", lambda c: ["run", c.art, "--random", "--seed", "-1"], 2, ("--seed -1",)),
    Case("run-output-directory", lambda c: ["run", c.art, "--random", "-o", c.d], 2, ("is a directory",)),
    Case("run-output-under-a-file", lambda c: ["run", c.art, "--random", "-o", _file(c, "f") / "o.npz"], 2,
         ("is a file, not a directory",)),
    # inspect
    Case("inspect-missing", lambda c: ["inspect", c.d / "none"], 2, ("does not exist",)),
    Case("inspect-tampered", lambda c: ["inspect", tampered_copy(c.art, c.d / "t")], 1, ("does not match its checksum",)),
    Case("inspect-tampered-json", lambda c: ["inspect", tampered_copy(c.art, c.d / "t"), "--json"], 1,
         ("does not match its checksum",)),
    Case("inspect-wrong-field", lambda c: ["inspect", _reforge(_copy(c), lambda m: m["fusion"].update(kernels="6"))], 1,
         ("'fusion.kernels'",)),
    # bench
    Case("bench-rpc-remote", lambda c: ["bench", c.art, "--device", "rpc://10.0.0.5:9190/rpi4", "--no-db"], 2,
         ("loopback", "--allow-remote-tracker", "SSH tunnel")),
    Case("bench-rpc-malformed", lambda c: ["bench", c.art, "--device", "rpc://127.0.0.1/rpi4", "--no-db"], 2,
         ("rpc://HOST:PORT/KEY",)),
    Case("bench-rpc-port-digits", lambda c: ["bench", c.art, "--device", "rpc://127.0.0.1:٩١٩٠/k", "--no-db"], 2,
         ("rpc://HOST:PORT/KEY",)),
    Case("bench-rpc-closed-port", lambda c: ["bench", c.art, "--device", "rpc://127.0.0.1:9/k", "--no-db", "--timeout",
                                             "5"], 1, ("cannot reach the RPC tracker",)),
    Case("bench-bad-device", lambda c: ["bench", c.art, "--device", "board", "--no-db"], 2, ("local, qemu or rpc://",)),
    Case("bench-threads-zero", lambda c: ["bench", c.art, "--threads", "0", "--no-db"], 2, ("--threads",)),
    Case("bench-threads-superscript", lambda c: ["bench", c.art, "--threads", "²", "--no-db"], 2, ("--threads",)),
    Case("bench-repeat-zero", lambda c: ["bench", c.art, "--repeat", "0", "--no-db"], 2, ("--repeat",)),
    Case("bench-timeout-zero", lambda c: ["bench", c.art, "--timeout", "0", "--no-db"], 2, ("--timeout",)),
    Case("bench-seed-negative", lambda c: ["bench", c.art, "--seed", "-1", "--no-db"], 2, ("--seed -1",)),
    Case("bench-atol-nan", lambda c: ["bench", c.art, "--atol", "nan", "--no-db"], 2, ("--atol nan",)),
    Case("bench-json-directory", lambda c: ["bench", c.art, "--json", c.d, "--no-db"], 2, ("--json", "is a directory")),
    Case("bench-csv-under-file", lambda c: ["bench", c.art, "--csv", _file(c, "f") / "r.csv", "--no-db"], 2,
         ("is a file, not a directory",)),
    Case("bench-report-suffix", lambda c: ["bench", c.art, "--report", c.d / "r.pdf", "--no-db"], 2, (".md or .html",)),
    Case("bench-report-read-only", lambda c: ["bench", c.art, "--report", "/sys/r.html", "--no-db"], 2,
         ("cannot create files",)),
    Case("bench-db-directory", lambda c: ["bench", c.art, "--db", c.d], 2, ("is not a file",)),
    Case("bench-db-foreign-sqlite", lambda c: ["bench", c.art, "--db", _sqlite_other(c)], 2,
         ("other tables", "nothing was changed")),
    Case("bench-db-text", lambda c: ["bench", c.art, "--db", _file(c, "r.db", "not sqlite\n" * 50)], 2,
         ("not a usable results database",)),
    Case("bench-profile-rpc", lambda c: ["bench", c.art, "--profile", "--device", "rpc://127.0.0.1:9/k", "--no-db"], 2,
         ("--profile",)),
    # history (read-only)
    Case("history-db-missing", lambda c: ["history", "--db", c.d / "none.db"], 2, ("does not exist",)),
    Case("history-db-empty-file", lambda c: ["history", "--db", _file(c, "e.db", b"")], 2, ("empty file",)),
    Case("history-db-foreign-sqlite", lambda c: ["history", "--db", _sqlite_other(c)], 2, ("other tables",)),
    Case("history-db-text", lambda c: ["history", "--db", _file(c, "t.db", "hello\n" * 100)], 2,
         ("not a usable results database",)),
    Case("history-threshold", lambda c: ["history", "--threshold", "abc"], 2, ("--threshold",)),
    # tune
    Case("tune-rpc-remote", lambda c: ["tune", c.onnx, "--trials", "4", "--rpc", "192.168.1.9:9190", "--db", c.d / "db"], 2,
         ("loopback", "--allow-remote-tracker")),
    Case("tune-rpc-malformed", lambda c: ["tune", c.onnx, "--trials", "4", "--rpc", "nohost", "--db", c.d / "db"], 2,
         ("HOST:PORT",)),
    Case("tune-db-corrupt", lambda c: ["tune", c.onnx, "--trials", "4", "--db", _corrupt_db(c)], 1,
         ("tuning database", "is corrupt")),
    Case("tune-no-budget", lambda c: ["tune", c.onnx, "--db", c.d / "db"], 2, ("--trials N or --budget",)),
    Case("tune-trials-zero", lambda c: ["tune", c.onnx, "--trials", "0", "--db", c.d / "db"], 2, ("--trials 0",)),
    Case("tune-bad-budget", lambda c: ["tune", c.onnx, "--budget", "5x", "--db", c.d / "db"], 2, ("not a duration",)),
    Case("tune-seed-negative", lambda c: ["tune", c.onnx, "--trials", "4", "--seed", "-1", "--db", c.d / "db"], 2,
         ("--seed -1",)),
    Case("tune-missing-model", lambda c: ["tune", c.d / "none.onnx", "--trials", "4", "--db", c.d / "db"], 2,
         ("does not exist",)),
    # the top level
    Case("unknown-command", lambda c: ["bogus"], 2, ("No such command",)),
    Case("runtime-unknown-target", lambda c: ["runtime", "build", "--target", "rpi44"], 2, ("unknown target",)),
]


def _npy_bytes(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npy_header(descr: str, shape: tuple) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _edit_text(art: Path, old: str, new: str, digest: bool = False) -> Path:
    """Replace text in the manifest; with `digest`, recompute the digest so the edit reaches the parser."""
    text = (art / "manifest.json").read_text().replace(old, new, 1)
    if digest:
        _write_digested(art, text.encode())
    else:
        (art / "manifest.json").write_text(text)
    return art


def _write_digested(art: Path, data: bytes) -> None:
    (art / "manifest.json").write_bytes(data)
    (art / "manifest.json.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  manifest.json\n")


@pytest.fixture(scope="module")
def corpus_results(request, host_artifact, convnet_onnx, small_tflite, tmp_path_factory):
    """Every selected case run through the real CLI, two at a time: name -> (proc, snapshots before, after)."""
    selected = {item.callspec.params["case"].name for item in request.session.items
                if isinstance(getattr(getattr(item, "callspec", None), "params", {}).get("case"), Case)}
    root = tmp_path_factory.mktemp("bad-input-corpus")
    db = root / "results.sqlite"  # the default results database: no case may create it
    env = {"AUTOGLM_RESULTS_DB": str(db)}

    def one(case: Case):
        d = root / case.name
        d.mkdir()
        ctx = Ctx(d, host_artifact, convnet_onnx, small_tflite)
        args = case.setup(ctx)
        before = (_snapshot(d), _snapshot(host_artifact))
        if case.cwd:
            proc = subprocess.run([str(AUTOGLM), *map(str, args)], cwd=d, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, **env})
        else:
            proc = run_cli(*args, env=env, timeout=300)
        after = (_snapshot(d), _snapshot(host_artifact))
        return proc, before, after

    cases = [c for c in CASES if c.name in selected]
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip([c.name for c in cases], pool.map(one, cases)))
    results["__db__"] = db
    return results


def test_corpus_is_large_enough():
    assert len(CASES) >= 80 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_corpus(corpus_results, case):
    proc, before, after = corpus_results[case.name]
    assert_user_error(proc, case.code, *case.fragments)
    assert after == before, "files were written or deleted"
    assert not corpus_results["__db__"].exists(), "a results database was created"
