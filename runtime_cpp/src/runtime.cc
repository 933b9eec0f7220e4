// Runtime: manifest checks, loading the TVM Relax VM library through the tvm::ffi API, running.
#include "autoglm/runtime.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "json.h"
#include "sha256.h"

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

constexpr int kFormatVersion = 2;
constexpr size_t kMaxManifestBytes = size_t(16) << 20;
const char* const kManifest = "manifest.json";
const char* const kManifestDigest = "manifest.json.sha256";

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool IsIntegerDType(const std::string& dtype) {
  return dtype == "int8" || dtype == "uint8" || dtype == "int16" || dtype == "uint16" || dtype == "int32" ||
         dtype == "uint32" || dtype == "int64" || dtype == "uint64";
}

// Why `p` is not a path of a file inside an artifact, or "" when it is one (the same rule as
// compile/artifact.py member_path_problem): relative, no empty, '.' or '..' part, no backslash
// or control character.
std::string PathProblem(const std::string& p) {
  if (p.empty()) return "is empty";
  if (p.size() > 1024) return "is longer than 1024 characters";
  if (p[0] == '/') return "is an absolute path";
  for (char c : p) {
    if (c == '\\' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return "holds a backslash or a control character";
    }
  }
  std::stringstream ss(p);
  std::string part;
  size_t parts = 0;
  while (std::getline(ss, part, '/')) {
    ++parts;
    if (part.empty() || part == "." || part == "..") {
      return "has an empty, '.' or '..' part (paths must stay inside the artifact)";
    }
    if (part.size() > 255) return "has a part longer than 255 bytes";
  }
  if (p.back() == '/' || parts == 0) return "has an empty, '.' or '..' part (paths must stay inside the artifact)";
  return "";
}

std::vector<TensorInfo> ParseTensorInfos(const detail::JsonValue& list, const std::string& what,
                                         const std::string& where) {
  if (!list.is_array()) throw ManifestError(where + ": '" + what + "s' must be a list of tensors");
  std::vector<TensorInfo> infos;
  std::set<std::string> names;
  for (const auto& item : list.as_array()) {
    TensorInfo info;
    if (!item.is_object() || !item.has("name") || !item.at("name").is_string() || !item.has("dtype") ||
        !item.at("dtype").is_string() || !item.has("shape") || !item.at("shape").is_array()) {
      throw ManifestError(where + ": each of '" + what + "s' must have a string name and dtype and a shape list");
    }
    info.name = item.at("name").as_string();
    info.dtype = item.at("dtype").as_string();
    if (info.name.empty() || info.name.size() > 256 || !names.insert(info.name).second) {
      throw ManifestError(where + ": " + what + " names must be unique non-empty strings, got '" + info.name + "'");
    }
    const auto& shape = item.at("shape").as_array();
    if (shape.size() > 32) throw ManifestError(where + ": " + what + " '" + info.name + "' has more than 32 dims");
    for (const auto& d : shape) {
      if (!d.is_number()) {
        throw ManifestError(where + ": " + what + " '" + info.name +
                            "' has a symbolic dimension: this runtime needs fixed shapes");
      }
      const int64_t n = d.as_int();
      if (n < 0 || n >= (int64_t(1) << 31)) {
        throw ManifestError(where + ": " + what + " '" + info.name + "' has dimension " + std::to_string(n) +
                            " (each must be in [0, 2^31))");
      }
      info.shape.push_back(n);
    }
    try {
      DTypeSize(info.dtype);  // rejects unknown dtypes early
    } catch (const Error& e) {
      throw ManifestError(where + ": " + what + " '" + info.name + "': " + e.what());
    }
    infos.push_back(std::move(info));
  }
  return infos;
}

// A file of the artifact is gone: perhaps the artifact was replaced while it was read.
struct Vanished {
  std::string rel;
  bool manifest_error;
  std::string message;
};

// An O_RDONLY descriptor of regular file `rel` inside the directory `dir_fd`, reached through
// no symbolic link (each part is checked with fstatat(AT_SYMLINK_NOFOLLOW), then opened O_NOFOLLOW).
int OpenInside(int dir_fd, const std::string& dir, const std::string& rel) {
  const std::string problem = PathProblem(rel);
  if (!problem.empty()) {
    throw ManifestError("artifact " + dir + ": manifest.json names the file '" + rel + "', which " + problem +
                        "; refusing to load it");
  }
  std::vector<std::string> parts;
  std::stringstream ss(rel);
  std::string part;
  while (std::getline(ss, part, '/')) parts.push_back(part);
  int cur = dir_fd;
  std::vector<int> opened;
  auto close_all = [&] {
    for (int fd : opened) close(fd);
  };
  std::string here;
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    here += (i ? "/" : "") + parts[i];
    struct stat st;
    if (fstatat(cur, parts[i].c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      const int err = errno;
      close_all();
      if (err == ENOENT) throw Vanished{rel, false, ""};
      throw ChecksumError("artifact " + dir + ": cannot read " + here + " (" + std::strerror(err) + ")");
    }
    if (S_ISLNK(st.st_mode)) {
      close_all();
      throw ChecksumError("artifact " + dir + ": " + here +
                          " is a symbolic link; an artifact may not contain links, so it is not loaded: "
                          "copy the real files in, or rebuild it with `autoglm compile`");
    }
    if (last ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode)) {
      close_all();
      throw ChecksumError("artifact " + dir + ": " + here + " is not " +
                          (last ? "a regular file" : "a directory") + "; rebuild it with `autoglm compile`");
    }
    int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | (last ? 0 : O_DIRECTORY);
    int fd = openat(cur, parts[i].c_str(), flags);
    if (fd < 0) {
      const int err = errno;
      close_all();
      if (err == ENOENT) throw Vanished{rel, false, ""};
      throw ChecksumError("artifact " + dir + ": cannot open " + here + " (" + std::strerror(err) + ")");
    }
    struct stat got;
    if (fstat(fd, &got) != 0 || got.st_dev != st.st_dev || got.st_ino != st.st_ino) {
      close(fd);
      close_all();
      throw Vanished{rel, false, ""};  // swapped between the check and the open
    }
    if (!last) opened.push_back(fd);
    cur = fd;
  }
  close_all();
  return cur;
}

// The bytes of an open file, at most `limit` + 1 of them (so a caller can tell "too large").
std::string ReadAll(int fd, size_t limit) {
  std::string out;
  char buf[1 << 16];
  if (lseek(fd, 0, SEEK_SET) != 0) throw Error(std::string("cannot seek: ") + std::strerror(errno));
  while (out.size() <= limit) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(std::string("read failed: ") + std::strerror(errno));
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  return out;
}

std::string Sha256Fd(int fd) {
  detail::Sha256 hash;
  char buf[1 << 16];
  if (lseek(fd, 0, SEEK_SET) != 0) throw Error(std::string("cannot seek: ") + std::strerror(errno));
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(std::string("read failed: ") + std::strerror(errno));
    }
    if (n == 0) break;
    hash.Update(buf, size_t(n));
  }
  return hash.HexDigest();
}

std::string Sha256Bytes(const std::string& data) {
  detail::Sha256 hash;
  hash.Update(data.data(), data.size());
  return hash.HexDigest();
}

// The architecture of an ELF shared library from its header, read through `fd`.
std::string ElfArch(int fd, const std::string& what) {
  unsigned char h[20];
  if (pread(fd, h, sizeof(h), 0) != ssize_t(sizeof(h)) || std::memcmp(h, "\x7f" "ELF", 4) != 0) {
    throw ChecksumError(what + " is not an ELF shared library; rebuild the artifact with `autoglm compile`");
  }
  const bool little = h[5] == 1;
  auto u16 = [&](int at) { return little ? unsigned(h[at] | (h[at + 1] << 8)) : unsigned((h[at] << 8) | h[at + 1]); };
  const unsigned machine = u16(18), type = u16(16);
  std::string arch;
  int elf_class = 0;
  if (machine == 0x3E) {
    arch = "x86_64", elf_class = 2;
  } else if (machine == 0xB7) {
    arch = "aarch64", elf_class = 2;
  } else if (machine == 0x28) {
    arch = "arm", elf_class = 1;
  } else {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "elf-machine-0x%x", machine);
    arch = buf;
    elf_class = h[4];
  }
  if (h[4] != elf_class || !little) {
    throw ChecksumError(what + " is an ELF file for " + arch + " in a class or byte order no target produces");
  }
  if (type != 3) throw ChecksumError(what + " is an ELF file but not a shared library");
  return arch;
}

bool SameDir(const std::string& path, int dir_fd) {
  struct stat a, b;
  return stat(path.c_str(), &a) == 0 && fstat(dir_fd, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Load the checked library from its descriptor: TVM picks a loader by file suffix and dlopen
// caches by name, so a fresh, uniquely named link to /proc/self/fd/N gives both what they need
// and maps exactly the bytes whose sha256 was checked.
ffi::Module LoadCheckedLibrary(int lib_fd, const std::string& fallback_path) {
  const std::string proc = "/proc/self/fd/" + std::to_string(lib_fd);
  if (access(proc.c_str(), R_OK) != 0) return ffi::Module::LoadFromFile(fallback_path);
  const char* tmp_root = std::getenv("TMPDIR");
  std::string templ = std::string(tmp_root && *tmp_root ? tmp_root : "/tmp") + "/autoglm-load-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) return ffi::Module::LoadFromFile(fallback_path);
  const std::string tmp_dir(buf.data());
  const std::string link = tmp_dir + "/model.so";
  if (symlink(proc.c_str(), link.c_str()) != 0) {
    rmdir(tmp_dir.c_str());
    return ffi::Module::LoadFromFile(fallback_path);
  }
  struct Cleanup {
    std::string link, dir;
    ~Cleanup() {
      unlink(link.c_str());
      rmdir(dir.c_str());
    }
  } cleanup{link, tmp_dir};
  return ffi::Module::LoadFromFile(link);
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
  std::map<std::string, std::pair<int64_t, int64_t>> index_bounds;  // input name -> [lo, hi]
  int library_fd = -1;
  double validation_accuracy = -1;  // lineage.validation_accuracy, or -1 if the manifest has none
  RuntimeOptions options;

  ~Impl() {
    if (library_fd >= 0) close(library_fd);
  }
  void Open(bool verify_checksums);
  void ReadManifest(int dir_fd, bool verify_checksums);
  void VerifyFiles(int dir_fd, const detail::JsonValue& files, const std::string& library_name);
  void CheckIndexRange(const TensorInfo& info, const HostTensor& h) const;
  std::vector<ffi::Tensor> ToDevice(const std::vector<HostTensor>& inputs);
  ffi::Any Call(const std::vector<ffi::Tensor>& args);
  std::vector<HostTensor> ToHost(const ffi::Any& result);
  void Sync();
};

void Runtime::Impl::Open(bool verify_checksums) {
  // Read through one directory descriptor; if a file vanishes because a publisher swapped in a
  // new version meanwhile (the path now names another directory), read the new one.
  for (int attempt = 0; attempt < 5; ++attempt) {
    int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) {
      const int err = errno;
      if (err == ENOENT) {
        throw ManifestError(dir + " is not an artifact directory: it does not exist (build one with `autoglm compile`)");
      }
      if (err == ENOTDIR) throw ManifestError(dir + " is not an artifact directory: it is a file");
      throw ManifestError("cannot open the artifact " + dir + ": " + std::strerror(err));
    }
    try {
      ReadManifest(dir_fd, verify_checksums);
      close(dir_fd);
      return;
    } catch (const Vanished& gone) {
      const bool same = SameDir(dir, dir_fd);
      close(dir_fd);
      if (library_fd >= 0) close(library_fd), library_fd = -1;
      if (same) {
        const std::string message =
            !gone.message.empty() ? gone.message
                                  : "artifact " + dir + " is incomplete: " + gone.rel +
                                        " is listed in manifest.json but missing";
        if (gone.manifest_error) throw ManifestError(message);
        throw ChecksumError(message);
      }
    } catch (...) {
      close(dir_fd);
      throw;
    }
  }
  throw Error("artifact " + dir + " kept changing while it was read (is something rewriting it in a loop?)");
}

void Runtime::Impl::ReadManifest(int dir_fd, bool verify_checksums) {
  const std::string path = dir + "/" + kManifest;
  int fd = -1;
  try {
    fd = OpenInside(dir_fd, dir, kManifest);
  } catch (const Vanished&) {
    throw Vanished{kManifest, true,
                   dir + " is not an artifact directory: " + path + " not found (build one with `autoglm compile`)"};
  }
  std::string text;
  try {
    text = ReadAll(fd, kMaxManifestBytes);
  } catch (const Error& e) {
    close(fd);
    throw ManifestError(path + ": " + e.what());
  }
  close(fd);
  if (text.size() > kMaxManifestBytes) throw ManifestError(path + " is larger than 16 MiB; rebuild the artifact");
  if (verify_checksums) {
    // The manifest is covered by its own digest, so no field of it is trusted unchecked.
    int dfd = -1;
    try {
      dfd = OpenInside(dir_fd, dir, kManifestDigest);
    } catch (const Vanished&) {
      throw Vanished{kManifestDigest, false,
                     "artifact " + dir + " has no manifest.json.sha256 (the sha256 of its manifest): it is "
                     "incomplete or was built by an older toolkit; rebuild it with `autoglm compile`"};
    }
    std::string side = ReadAll(dfd, 4096);
    close(dfd);
    if (!side.empty() && side.back() == '\n') side.pop_back();
    const std::string suffix = "  manifest.json";
    if (side.size() != 64 + suffix.size() || side.compare(64, std::string::npos, suffix) != 0 ||
        !IsHex64(side.substr(0, 64))) {
      throw ChecksumError("artifact " + dir + ": manifest.json.sha256 is not '<sha256>  manifest.json'; rebuild it");
    }
    if (side.substr(0, 64) != Sha256Bytes(text)) {
      throw ChecksumError("artifact " + dir + ": manifest.json does not match its checksum in manifest.json.sha256 "
                          "(modified or corrupt); rebuild or re-copy the artifact");
    }
  }
  detail::JsonValue m;
  try {
    m = detail::JsonValue::Parse(text);
  } catch (const std::runtime_error& e) {
    throw ManifestError(path + ": " + e.what());
  }
  try {
    if (!m.is_object()) throw ManifestError(path + ": not a JSON object");
    if (!m.has("format_version") || !m.at("format_version").is_number()) {
      throw ManifestError(path + ": no format_version; rebuild the artifact with `autoglm compile`");
    }
    const int64_t version = m.at("format_version").as_int();
    if (version > kFormatVersion) {
      throw ManifestError(path + ": format_version " + std::to_string(version) +
                          " is newer than this runtime understands (" + std::to_string(kFormatVersion) +
                          "): rebuild the runtime");
    }
    if (version != kFormatVersion) {
      throw ManifestError(path + ": format_version " + std::to_string(version) + " is older than this runtime reads (" +
                          std::to_string(kFormatVersion) + "): rebuild the artifact with `autoglm compile`");
    }
    if (!m.has("target") || !m.at("target").is_object()) throw ManifestError(path + ": 'target' must be an object");
    const auto& target = m.at("target");
    target_name = target.has("name") ? target.at("name").as_string() : "";
    arch = target.at("arch").as_string();
    device = target.has("device") ? target.at("device").as_string() : "cpu";
    if (arch != "x86_64" && arch != "aarch64" && arch != "arm") {
      throw ManifestError(path + ": target.arch must be x86_64, aarch64 or arm, got '" + arch + "'");
    }
    if (m.has("lineage") && m.at("lineage").is_object() && m.at("lineage").has("validation_accuracy") &&
        !m.at("lineage").at("validation_accuracy").is_null()) {
      const auto& acc = m.at("lineage").at("validation_accuracy");
      if (!acc.is_number() || !(acc.as_number() >= 0 && acc.as_number() <= 1)) {
        throw ManifestError(path + ": lineage.validation_accuracy must be a number from 0 to 1");
      }
      validation_accuracy = acc.as_number();
    }
    if (!m.has("library") || !m.at("library").is_string()) throw ManifestError(path + ": 'library' must be a string");
    library_name = m.at("library").as_string();
    inputs = ParseTensorInfos(m.at("inputs"), "input", path);
    outputs = m.has("outputs") ? ParseTensorInfos(m.at("outputs"), "output", path) : std::vector<TensorInfo>{};
    if (m.has("index_bounds")) {
      const auto& bounds = m.at("index_bounds");
      if (!bounds.is_object()) throw ManifestError(path + ": 'index_bounds' must be an object");
      for (const auto& kv : bounds.as_object()) {
        const TensorInfo* input = nullptr;
        for (const auto& info : inputs) input = info.name == kv.first ? &info : input;
        if (input == nullptr || !IsIntegerDType(input->dtype)) {
          throw ManifestError(path + ": index_bounds names '" + kv.first + "', which is not an integer input");
        }
        const auto& pair = kv.second;
        if (!pair.is_array() || pair.as_array().size() != 2 || !pair.as_array()[0].is_number() ||
            !pair.as_array()[1].is_number() || pair.as_array()[0].as_int() > pair.as_array()[1].as_int()) {
          throw ManifestError(path + ": index_bounds." + kv.first + " must be [lo, hi], two integers with lo <= hi");
        }
        index_bounds[kv.first] = {pair.as_array()[0].as_int(), pair.as_array()[1].as_int()};
      }
    }
  } catch (const ManifestError&) {
    throw;
  } catch (const std::runtime_error& e) {
    throw ManifestError(path + ": " + e.what());
  }
  const std::string problem = PathProblem(library_name);
  if (!problem.empty()) {
    throw ManifestError(path + ": library '" + library_name + "' is not a path inside the artifact (it " + problem + ")");
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
  if (verify_checksums) {
    if (!m.has("files") || !m.at("files").is_object()) {
      throw ManifestError(path + ": no \"files\" checksums: the artifact cannot be verified; rebuild it");
    }
    VerifyFiles(dir_fd, m.at("files"), library_name);
  } else {
    library_fd = OpenInside(dir_fd, dir, library_name);
  }
  // The library's own header, not the manifest, says what it runs on.
  const std::string lib_arch = ElfArch(library_fd, dir + "/" + library_name);
  if (lib_arch != BuildArch()) {
    throw ArchMismatchError("artifact " + dir + ": its library is an " + lib_arch + " ELF file (manifest.json says " +
                            arch + ") and this runtime is " + BuildArch() +
                            ": the manifest does not describe this library; rebuild the artifact");
  }
}

void Runtime::Impl::VerifyFiles(int dir_fd, const detail::JsonValue& files, const std::string& library_name) {
  if (!files.has(library_name)) {
    throw ChecksumError("artifact " + dir + ": manifest.json lists no sha256 for the library " +
                        library_name + "; refusing to load an unverified library");
  }
  for (const auto& kv : files.as_object()) {
    const std::string& name = kv.first;
    const std::string problem = PathProblem(name);
    if (!problem.empty()) {
      throw ManifestError("artifact " + dir + ": manifest.json names a file outside the artifact: " + name + " (it " +
                          problem + ")");
    }
    if (name == kManifest || name == kManifestDigest) {
      throw ManifestError("artifact " + dir + ": manifest.json lists " + name + " among its files");
    }
    if (!kv.second.is_string() || !IsHex64(kv.second.as_string())) {
      throw ManifestError("artifact " + dir + ": the checksum of " + name +
                          " is not a sha256 (64 lowercase hex digits)");
    }
    const std::string& expected = kv.second.as_string();
    const std::string file = dir + "/" + name;
    int fd = OpenInside(dir_fd, dir, name);
    std::string actual;
    try {
      actual = Sha256Fd(fd);
    } catch (const Error& e) {
      close(fd);
      throw ChecksumError("artifact " + dir + ": cannot read " + name + " (" + e.what() + ")");
    }
    if (actual != expected) {
      close(fd);
      throw ChecksumError("checksum mismatch for " + file + ": manifest.json says sha256 " + expected +
                          ", the file has " + actual +
                          "; the artifact was modified or corrupted, rebuild or re-copy it");
    }
    if (name == library_name) {
      if (library_fd >= 0) close(library_fd);
      library_fd = fd;
    } else {
      close(fd);
    }
  }
}

void Runtime::Impl::CheckIndexRange(const TensorInfo& info, const HostTensor& h) const {
  auto it = index_bounds.find(info.name);
  if (it == index_bounds.end()) return;
  const int64_t lo = it->second.first, hi = it->second.second;
  const int64_t n = h.num_elements();
  for (int64_t i = 0; i < n; ++i) {
    int64_t v = 0;
    bool above = false;  // an unsigned value too large for int64
    const std::string& d = info.dtype;
    if (d == "int8") v = h.as<int8_t>()[i];
    else if (d == "uint8") v = h.as<uint8_t>()[i];
    else if (d == "int16") v = h.as<int16_t>()[i];
    else if (d == "uint16") v = h.as<uint16_t>()[i];
    else if (d == "int32") v = h.as<int32_t>()[i];
    else if (d == "uint32") v = h.as<uint32_t>()[i];
    else if (d == "int64") v = h.as<int64_t>()[i];
    else if (d == "uint64") {
      const uint64_t u = h.as<uint64_t>()[i];
      above = u > uint64_t(INT64_MAX);
      v = above ? INT64_MAX : int64_t(u);
    } else {
      return;
    }
    if (above || v < lo || v > hi) {
      throw InputError("input '" + info.name + "' holds " + (above ? std::string("a value above 2^63") : std::to_string(v)) +
                       " at flat index " + std::to_string(i) + ", outside [" + std::to_string(lo) + ", " +
                       std::to_string(hi) + "]: it indexes a table of " + std::to_string(hi + 1) +
                       " entries (e.g. token ids of an embedding); pass values in that range");
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
      throw InputError("input '" + info.name + "' must be " + info.dtype + " " + ShapeStr(info.shape) +
                       ", got " + h.dtype + " " + ShapeStr(h.shape));
    }
    if (h.data.size() != info.nbytes()) {
      throw InputError("input '" + info.name + "' holds " + std::to_string(h.data.size()) +
                       " bytes, its shape and dtype need " + std::to_string(info.nbytes()));
    }
    CheckIndexRange(info, h);
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
  s.options = options;
  s.dir = artifact_dir;
  while (s.dir.size() > 1 && s.dir.back() == '/') s.dir.pop_back();
  if (options.num_threads < 0) throw Error("num_threads must be >= 0 (0 keeps TVM's default)");
  // TVM sizes its CPU thread pool from this variable when the pool is first used.
  if (options.num_threads > 0) setenv("TVM_NUM_THREADS", std::to_string(options.num_threads).c_str(), 1);

  // Checks the manifest, every path, the architecture and (unless turned off) every checksum
  // before the library is opened.
  s.Open(options.verify_checksums);

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
    s.library = LoadCheckedLibrary(s.library_fd, lib_path);
    close(s.library_fd);
    s.library_fd = -1;
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
const std::string& Runtime::artifact_dir() const { return impl_->dir; }
double Runtime::validation_accuracy() const { return impl_->validation_accuracy; }

namespace {
std::string Signature(const std::vector<TensorInfo>& ins, const std::vector<TensorInfo>& outs) {
  auto fmt = [](const std::vector<TensorInfo>& v) {
    std::string s;
    for (const auto& t : v) {
      s += (s.empty() ? "" : ", ") + t.name + "[";
      for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
      s += "]:" + t.dtype;
    }
    return s;
  };
  return "(" + fmt(ins) + ") -> (" + fmt(outs) + ")";
}

std::string Percent(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f%%", 100 * v);
  return buf;
}
}  // namespace

void Runtime::Swap(const std::string& new_artifact_dir, bool force) {
  Runtime next(new_artifact_dir, impl_->options);  // throws before anything here changes
  const Impl& old = *impl_;
  const Impl& neu = *next.impl_;
  const std::string sig_old = Signature(old.inputs, old.outputs), sig_new = Signature(neu.inputs, neu.outputs);
  if (sig_old != sig_new) {
    throw SwapRefusedError("cannot swap " + old.dir + " for " + neu.dir + ": inputs/outputs differ (" + sig_old +
                           " vs " + sig_new + "); load it as a separate model instead");
  }
  if (!force && old.validation_accuracy >= 0 && neu.validation_accuracy >= 0 &&
      neu.validation_accuracy < old.validation_accuracy) {
    throw SwapRefusedError("cannot swap " + old.dir + " for " + neu.dir + ": its validation accuracy is lower (" +
                           Percent(neu.validation_accuracy) + " vs " + Percent(old.validation_accuracy) +
                           ", from their lineage); force the swap to swap anyway");
  }
  impl_.swap(next.impl_);
}

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
