// Runtime: manifest checks, loading the TVM Relax VM library through the tvm::ffi API, running.
#include "autoglm/runtime.h"

#include <dlfcn.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>

#include "json.h"

namespace ffi = tvm::ffi;

namespace autoglm {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Run `fn`, turning a TVM FFI error into autoglm::Error with `context` in front.
template <typename F>
auto Guard(const std::string& context, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const ffi::Error& e) {
    throw Error(context + ": " + e.kind() + ": " + e.message());
  }
}

std::vector<TensorInfo> ParseTensorInfos(const detail::JsonValue& list, const std::string& what) {
  std::vector<TensorInfo> infos;
  for (const auto& item : list.as_array()) {
    TensorInfo info;
    info.name = item.at("name").as_string();
    info.dtype = item.at("dtype").as_string();
    for (const auto& d : item.at("shape").as_array()) {
      if (!d.is_number()) {
        throw ManifestError(what + " '" + info.name +
                            "' has a symbolic dimension: this runtime needs fixed shapes");
      }
      info.shape.push_back(d.as_int());
    }
    DTypeSize(info.dtype);  // rejects unknown dtypes early
    infos.push_back(std::move(info));
  }
  return infos;
}

bool SafeRelativePath(const std::string& p) {
  if (p.empty() || p[0] == '/') return false;
  std::stringstream ss(p);
  std::string part;
  while (std::getline(ss, part, '/')) {
    if (part == "..") return false;
  }
  return true;
}

// The CUDA device API lives in its own library; load it (from beside the runner, or the
// loader's search path) before the VM asks for a CUDA device.
void LoadCudaRuntime() {
  if (dlopen("libtvm_runtime_cuda.so", RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* why = dlerror();
    throw ArchMismatchError(std::string("this artifact runs on CUDA, but libtvm_runtime_cuda.so "
                                        "could not be loaded (") +
                            (why ? why : "unknown error") +
                            "): put it beside the runner (it comes with the apache-tvm wheel) "
                            "and make sure the NVIDIA driver is installed");
  }
}

}  // namespace

const char* Runtime::BuildArch() {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#elif defined(__arm__)
  return "arm";
#else
#error "unsupported architecture: the runtime is built for x86_64, aarch64 and arm"
#endif
}

struct Runtime::Impl {
  std::string dir;
  std::vector<TensorInfo> inputs, outputs;
  std::string target_name, arch, device, library_name;
  double load_ms = 0;
  DLDevice dev{kDLCPU, 0};
  ffi::Module library{ffi::UnsafeInit()};
  ffi::Module vm{ffi::UnsafeInit()};
  ffi::Function main;
  ffi::Function alloc_tensor, copy_from_bytes, copy_to_bytes, stream_sync;

  void ReadManifest(bool verify_checksums);
  void VerifyFiles(const detail::JsonValue& files, const std::string& library_name);
  std::vector<ffi::Tensor> ToDevice(const std::vector<HostTensor>& inputs);
  ffi::Any Call(const std::vector<ffi::Tensor>& args);
  std::vector<HostTensor> ToHost(const ffi::Any& result);
  void Sync();
};

void Runtime::Impl::ReadManifest(bool verify_checksums) {
  const std::string path = dir + "/manifest.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ManifestError(dir + " is not an artifact directory: " + path +
                        " not found (build one with `autoglm compile`)");
  }
  std::stringstream text;
  text << in.rdbuf();
  detail::JsonValue m;
  try {
    m = detail::JsonValue::Parse(text.str());
  } catch (const std::runtime_error& e) {
    throw ManifestError(path + ": " + e.what());
  }
  try {
    if (m.has("format_version") && m.at("format_version").as_int() > 1) {
      throw ManifestError(path + ": format_version " +
                          std::to_string(m.at("format_version").as_int()) +
                          " is newer than this runtime understands (1): rebuild the runtime");
    }
    const auto& target = m.at("target");
    target_name = target.has("name") ? target.at("name").as_string() : "";
    arch = target.at("arch").as_string();
    device = target.has("device") ? target.at("device").as_string() : "cpu";
    library_name = m.has("library") ? m.at("library").as_string() : "model.so";
    inputs = ParseTensorInfos(m.at("inputs"), "input");
    outputs = m.has("outputs") ? ParseTensorInfos(m.at("outputs"), "output") : std::vector<TensorInfo>{};
  } catch (const ManifestError&) {
    throw;
  } catch (const std::runtime_error& e) {
    throw ManifestError(path + ": " + e.what());
  }

  // Refuse a foreign artifact before touching its library.
  if (arch != BuildArch()) {
    throw ArchMismatchError("artifact " + dir + " was built for " + arch +
                            (target_name.empty() ? "" : " (target " + target_name + ")") +
                            " but this runtime is " + BuildArch() + ": run it with a runtime built for " +
                            arch + " (on the board, or under qemu-" + arch +
                            "-static), or rebuild the artifact for " + BuildArch());
  }
  if (device != "cpu" && device != "cuda") {
    throw ArchMismatchError("artifact " + dir + " targets device '" + device +
                            "'; this runtime runs cpu and cuda artifacts");
  }
  if (!SafeRelativePath(library_name)) {
    throw ManifestError(path + ": library '" + library_name + "' is not a path inside the artifact");
  }
  if (!verify_checksums) return;
  if (!m.has("files") || !m.at("files").is_object()) {
    throw ManifestError(path + ": no \"files\" checksums: the artifact cannot be verified; rebuild it");
  }
  VerifyFiles(m.at("files"), library_name);
}

void Runtime::Impl::VerifyFiles(const detail::JsonValue& files, const std::string& library_name) {
  if (!files.has(library_name)) {
    throw ChecksumError("artifact " + dir + ": manifest.json lists no sha256 for the library " +
                        library_name + "; refusing to load an unverified library");
  }
  for (const auto& kv : files.as_object()) {
    const std::string& name = kv.first;
    if (!SafeRelativePath(name)) {
      throw ChecksumError("artifact " + dir + ": manifest.json names a file outside the artifact: " + name);
    }
    std::string expected;
    try {
      expected = kv.second.as_string();
    } catch (const std::runtime_error&) {
      throw ManifestError("artifact " + dir + ": the checksum of " + name + " is not a string");
    }
    const std::string file = dir + "/" + name;
    if (!std::ifstream(file)) {
      throw ChecksumError("artifact " + dir + " is incomplete: " + name +
                          " is listed in manifest.json but missing");
    }
    std::string actual = Sha256File(file);
    for (char& c : expected) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (actual != expected) {
      throw ChecksumError("checksum mismatch for " + file + ": manifest.json says sha256 " + expected +
                          ", the file has " + actual +
                          "; the artifact was modified or corrupted, rebuild or re-copy it");
    }
  }
}

std::vector<ffi::Tensor> Runtime::Impl::ToDevice(const std::vector<HostTensor>& host) {
  if (host.size() != inputs.size()) {
    throw Error("the model takes " + std::to_string(inputs.size()) + " input(s), got " +
                std::to_string(host.size()));
  }
  std::vector<ffi::Tensor> out;
  out.reserve(host.size());
  for (size_t i = 0; i < host.size(); ++i) {
    const TensorInfo& info = inputs[i];
    const HostTensor& h = host[i];
    if (h.dtype != info.dtype || h.shape != info.shape) {
      throw Error("input '" + info.name + "' must be " + info.dtype + " " + ShapeStr(info.shape) +
                  ", got " + h.dtype + " " + ShapeStr(h.shape));
    }
    if (h.data.size() != info.nbytes()) {
      throw Error("input '" + info.name + "' holds " + std::to_string(h.data.size()) +
                  " bytes, its shape and dtype need " + std::to_string(info.nbytes()));
    }
    out.push_back(Guard("allocating input '" + info.name + "'", [&] {
      ffi::Tensor t = alloc_tensor(ffi::Shape(info.shape), ffi::StringToDLDataType(info.dtype), dev,
                                   ffi::Optional<ffi::String>())
                          .cast<ffi::Tensor>();
      copy_from_bytes(t, static_cast<void*>(const_cast<uint8_t*>(h.data.data())), int64_t(h.data.size()));
      return t;
    }));
  }
  return out;
}

ffi::Any Runtime::Impl::Call(const std::vector<ffi::Tensor>& args) {
  std::vector<ffi::AnyView> views(args.begin(), args.end());
  ffi::Any result;
  Guard("running main of " + dir, [&] {
    main.CallPacked(views.data(), int32_t(views.size()), &result);
  });
  return result;
}

void Runtime::Impl::Sync() {
  if (dev.device_type != kDLCPU) {
    Guard("synchronizing the device", [&] { stream_sync(dev, int64_t(0)); });
  }
}

std::vector<HostTensor> Runtime::Impl::ToHost(const ffi::Any& result) {
  // main returns one tensor or a (possibly nested) tuple of tensors: flatten in order.
  std::vector<ffi::Tensor> tensors;
  std::function<void(const ffi::Any&)> flatten = [&](const ffi::Any& v) {
    if (auto t = v.try_cast<ffi::Tensor>()) {
      tensors.push_back(*t);
    } else if (auto arr = v.try_cast<ffi::Array<ffi::Any>>()) {
      for (const ffi::Any& item : *arr) flatten(item);
    } else {
      throw Error("main of " + dir + " returned a " + v.GetTypeKey() +
                  ", expected a tensor or a tuple of tensors");
    }
  };
  flatten(result);
  if (!outputs.empty() && tensors.size() != outputs.size()) {
    throw Error("main of " + dir + " returned " + std::to_string(tensors.size()) +
                " tensor(s) but manifest.json lists " + std::to_string(outputs.size()) + " output(s)");
  }
  std::vector<HostTensor> host;
  host.reserve(tensors.size());
  for (const ffi::Tensor& t : tensors) {
    if (!t.IsContiguous()) throw Error("main of " + dir + " returned a non-contiguous tensor");
    ffi::ShapeView shape = t.shape();
    HostTensor h(std::string(ffi::DLDataTypeToString(t.dtype())),
                 std::vector<int64_t>(shape.begin(), shape.end()));
    Guard("copying an output to the host", [&] {
      copy_to_bytes(t, static_cast<void*>(h.data.data()), int64_t(h.data.size()));
    });
    host.push_back(std::move(h));
  }
  return host;
}

Runtime::Runtime(const std::string& artifact_dir, const RuntimeOptions& options)
    : impl_(std::make_unique<Impl>()) {
  const auto start = Clock::now();
  Impl& s = *impl_;
  s.dir = artifact_dir;
  while (s.dir.size() > 1 && s.dir.back() == '/') s.dir.pop_back();
  if (options.num_threads < 0) throw Error("num_threads must be >= 0 (0 keeps TVM's default)");
  // TVM sizes its CPU thread pool from this variable when the pool is first used.
  if (options.num_threads > 0) setenv("TVM_NUM_THREADS", std::to_string(options.num_threads).c_str(), 1);

  // Checks the architecture and (unless turned off) every checksum before the library is opened.
  s.ReadManifest(options.verify_checksums);

  if (s.device == "cuda") {
    LoadCudaRuntime();
    s.dev = DLDevice{kDLCUDA, options.device_id};
  }
  const std::string lib_path = s.dir + "/" + s.library_name;
  Guard("loading " + lib_path, [&] {
    s.alloc_tensor = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
    s.copy_from_bytes = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes");
    s.copy_to_bytes = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyToBytes");
    s.stream_sync = ffi::Function::GetGlobalRequired("runtime.Device_StreamSync");
    s.library = ffi::Module::LoadFromFile(lib_path);
    ffi::Optional<ffi::Function> load = s.library->GetFunction("vm_load_executable", true);
    if (!load) {
      throw Error(lib_path + " is not a TVM Relax VM executable (no vm_load_executable): "
                  "export it with tvm.compile(...).export_library()");
    }
    s.vm = (*load)().cast<ffi::Module>();
    ffi::Function init = s.vm->GetFunction("vm_initialization").value();
    constexpr int kPooledAllocator = 2;
    if (s.dev.device_type == kDLCPU) {
      init(int(s.dev.device_type), s.dev.device_id, kPooledAllocator);
    } else {  // the VM also needs the host CPU for shape computations
      init(int(s.dev.device_type), s.dev.device_id, kPooledAllocator, int(kDLCPU), 0, kPooledAllocator);
    }
    ffi::Optional<ffi::Function> main = s.vm->GetFunction("main");
    if (!main) throw Error(lib_path + " has no function 'main'");
    s.main = *main;
  });
  s.load_ms = MsSince(start);
}

Runtime::~Runtime() = default;
Runtime::Runtime(Runtime&&) noexcept = default;
Runtime& Runtime::operator=(Runtime&&) noexcept = default;

const std::vector<TensorInfo>& Runtime::inputs() const { return impl_->inputs; }
const std::vector<TensorInfo>& Runtime::outputs() const { return impl_->outputs; }
const std::string& Runtime::target_name() const { return impl_->target_name; }
const std::string& Runtime::arch() const { return impl_->arch; }
const std::string& Runtime::device() const { return impl_->device; }
double Runtime::load_ms() const { return impl_->load_ms; }

std::vector<HostTensor> Runtime::Run(const std::vector<HostTensor>& inputs) {
  std::vector<HostTensor> out = impl_->ToHost(impl_->Call(impl_->ToDevice(inputs)));
  for (size_t i = 0; i < out.size() && i < impl_->outputs.size(); ++i) {
    const TensorInfo& info = impl_->outputs[i];
    if (out[i].shape != info.shape || out[i].dtype != info.dtype) {
      throw Error("output '" + info.name + "' is " + out[i].dtype + " " + ShapeStr(out[i].shape) +
                  " but manifest.json says " + info.dtype + " " + ShapeStr(info.shape));
    }
  }
  return out;
}

std::vector<double> Runtime::Time(const std::vector<HostTensor>& inputs, int warmup, int repeat) {
  if (warmup < 0 || repeat < 1) throw Error("timing needs warmup >= 0 and repeat >= 1");
  std::vector<ffi::Tensor> args = impl_->ToDevice(inputs);
  for (int i = 0; i < warmup; ++i) {
    impl_->Call(args);
    impl_->Sync();
  }
  std::vector<double> ms;
  ms.reserve(size_t(repeat));
  for (int i = 0; i < repeat; ++i) {
    const auto start = Clock::now();
    ffi::Any result = impl_->Call(args);
    impl_->Sync();
    ms.push_back(MsSince(start));
  }
  return ms;
}

}  // namespace autoglm
