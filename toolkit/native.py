"""The C++ runtime glue for the user surface; it lives in `compile.native` so that verification under
qemu (a compile stage) can use it without `compile` importing `toolkit`."""

from compile.native import (  # noqa: F401 - re-exported
    BUILD_ARCHES, RUNNER, SOURCE_DIR, NativeRunResult, NativeRuntimeError, build_runtime, cache_root, emulator_hint, run_artifact,
    runner_path,
)

__all__ = ["BUILD_ARCHES", "NativeRunResult", "NativeRuntimeError", "RUNNER", "SOURCE_DIR", "build_runtime", "cache_root",
           "emulator_hint", "run_artifact", "runner_path"]
