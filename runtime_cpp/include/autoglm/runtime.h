// Open-AutoGLM Edge C++ runtime: load a compiled artifact directory and run it, no Python.
//
// An artifact directory holds `manifest.json`, its digest `manifest.json.sha256`, and the TVM
// Relax VM library it names (`model.so`). An artifact is untrusted input: opening one checks the
// manifest against its digest and its fields, that every file it names lies inside the directory
// (no absolute path, no `..`, no symbolic link), the sha256 of every file, and the library's ELF
// header against this runtime's architecture, all before the library is opened; the library is
// then loaded from the descriptor that was checked. Inputs that index a table (token ids of an
// embedding) are checked against the range recorded in the manifest before every run.
//
// This header needs only the C++17 standard library; TVM stays an implementation detail
// (link with autoglm_runtime, libtvm_runtime.so and libtvm_ffi.so).
//
//   autoglm::Runtime rt("artifacts/mobilenet-rpi4");
//   autoglm::HostTensor x = autoglm::ReadNpy("x.npy");
//   std::vector<autoglm::HostTensor> ys = rt.Run({x});
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace autoglm {

/*! \brief Any error the runtime reports; the message says what is wrong and what to do. */
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
/*! \brief manifest.json is missing, unreadable or lacks a required field. */
class ManifestError : public Error {
 public:
  using Error::Error;
};
/*! \brief A file of the artifact is missing or its sha256 differs from the manifest's. */
class ChecksumError : public Error {
 public:
  using Error::Error;
};
/*! \brief The artifact was built for another architecture or device than this runtime. */
class ArchMismatchError : public Error {
 public:
  using Error::Error;
};
/*! \brief An input has the wrong shape or dtype, or a value outside the range the model can index. */
/*! \brief Runtime::Swap refused the new version (other inputs/outputs, or a lower validation accuracy). */
class SwapRefusedError : public Error {
 public:
  using Error::Error;
};

class InputError : public Error {
 public:
  using Error::Error;
};

/*! \brief Name, shape and dtype (numpy spelling: "float32", "int8", ...) of a model tensor. */
struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;

  int64_t num_elements() const;
  size_t nbytes() const;
};

/*! \brief A dense C-order tensor in host memory (bytes in the machine's byte order). */
struct HostTensor {
  std::string dtype = "float32";
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;

  HostTensor() = default;
  /*! \brief A zero-filled tensor of the given dtype and shape. */
  HostTensor(std::string dtype, std::vector<int64_t> shape);

  int64_t num_elements() const;
  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(data.data());
  }
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data.data());
  }
};

/*! \brief Bytes per element of a dtype; throws Error for an unknown one. */
size_t DTypeSize(const std::string& dtype);

struct RuntimeOptions {
  /*! \brief Size of TVM's CPU thread pool (sets TVM_NUM_THREADS); 0 keeps TVM's default. */
  int num_threads = 0;
  /*! \brief Index of the device for CUDA artifacts. */
  int device_id = 0;
  /*! \brief Check the manifest's sha256 of every file before loading (leave on outside tests). */
  bool verify_checksums = true;
};

/*! \brief Summary of a list of latencies in milliseconds (percentiles interpolate linearly). */
struct LatencyStats {
  size_t count = 0;
  double mean = 0, std = 0, min = 0, max = 0, p50 = 0, p90 = 0, p95 = 0, p99 = 0;
};
LatencyStats Summarize(const std::vector<double>& latencies_ms);

/*! \brief A loaded artifact, ready to run. Not thread-safe: use one per thread. */
class Runtime {
 public:
  /*! \brief Open, verify and load the artifact in `artifact_dir`; throws Error (or a subclass). */
  explicit Runtime(const std::string& artifact_dir, const RuntimeOptions& options = {});
  ~Runtime();
  Runtime(Runtime&&) noexcept;
  Runtime& operator=(Runtime&&) noexcept;
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  const std::vector<TensorInfo>& inputs() const;
  const std::vector<TensorInfo>& outputs() const;
  /*! \brief The manifest's target name ("rpi4"), arch ("aarch64") and device ("cpu"). */
  const std::string& target_name() const;
  const std::string& arch() const;
  const std::string& device() const;
  /*! \brief Wall time the constructor took (checksums, library load, VM init), in ms. */
  double load_ms() const;
  /*! \brief The artifact directory this runtime serves. */
  const std::string& artifact_dir() const;
  /*! \brief The manifest's lineage.validation_accuracy (artifacts of `autoglm search`), or a negative value if none. */
  double validation_accuracy() const;

  /*!
   * \brief Load `new_artifact_dir` (verified like the constructor, same options) and serve it from now on.
   * It must take the same inputs and give the same outputs (names, shapes, dtypes); when both versions record a
   * validation accuracy in their lineage, a less accurate one is refused unless `force`. Refusals throw
   * SwapRefusedError, a bad artifact the constructor's errors; either way this runtime keeps its version.
   * Like Run, not to be called concurrently with other calls on this object.
   */
  void Swap(const std::string& new_artifact_dir, bool force = false);

  /*! \brief Run `main` on inputs given in manifest order; outputs come in manifest order. */
  std::vector<HostTensor> Run(const std::vector<HostTensor>& inputs);

  /*!
   * \brief Time `main`: inputs are copied to the device once, then `warmup` untimed calls and
   * `repeat` timed ones. Returns the latency of each timed call in milliseconds.
   */
  std::vector<double> Time(const std::vector<HostTensor>& inputs, int warmup, int repeat);

  /*! \brief The architecture this runtime was compiled for: "x86_64", "aarch64" or "arm". */
  static const char* BuildArch();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/*! \brief sha256 of a file as 64 lowercase hex characters; throws Error if it cannot be read. */
std::string Sha256File(const std::string& path);

/*! \brief Read a .npy file (format 1.0-3.0, C order, little-endian numeric dtypes or bool). */
HostTensor ReadNpy(const std::string& path);
/*! \brief Write a tensor as a .npy file (format 1.0). */
void WriteNpy(const std::string& path, const HostTensor& tensor);

}  // namespace autoglm
