// autoglm-runner: load an artifact, run it once on given or random inputs, time it, and report.
//
//   autoglm-runner ARTIFACT_DIR [--input NAME=file.npy ...|--random SEED] [--output-dir DIR]
//                  [--warmup N] [--repeat N] [--threads N] [--json] [--swap-to DIR [--force-swap]]
//
// Exit status: 0 ok, 2 bad usage (unknown flag, missing --input, an input of the wrong shape or dtype or
// with an index outside the model's table), 3 bad manifest (a missing or wrong-typed field, a path
// outside the artifact), 4 checksum mismatch (a file, the manifest, a symbolic link in the artifact),
// 5 artifact for another architecture/device, 6 --swap-to refused (other inputs/outputs, lower validation
// accuracy), 1 any other failure.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "autoglm/runtime.h"
#include "json.h"

namespace {

using autoglm::detail::JsonQuote;

constexpr const char* kUsage =
    "usage: autoglm-runner ARTIFACT_DIR [--input NAME=file.npy ...|--random SEED]\n"
    "                      [--output-dir DIR] [--warmup N] [--repeat N] [--threads N] [--json]\n"
    "  --input NAME=FILE  an input tensor from a .npy file (give every input)\n"
    "  --random SEED      random inputs from SEED (default when no --input: seed 0)\n"
    "  --output-dir DIR   write each output as DIR/NAME.npy\n"
    "  --warmup N         untimed runs before timing (default 1)\n"
    "  --repeat N         timed runs (default 10; 0 runs once, untimed)\n"
    "  --threads N        TVM CPU thread pool size (default: TVM's choice)\n"
    "  --json             print one JSON object on stdout instead of text\n"
    "  --swap-to DIR      load ARTIFACT_DIR, then swap to DIR as a live app would (Runtime::Swap) and run that\n"
    "  --force-swap       swap even to a version with a lower validation accuracy\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string artifact;
  std::map<std::string, std::string> input_files;
  uint64_t seed = 0;
  bool seed_given = false;
  std::string output_dir;
  int warmup = 1;
  int repeat = 10;
  int threads = 0;
  bool json = false;
  std::string swap_to;
  bool force_swap = false;
};

int ParseCount(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    long v = std::stol(value, &used);
    if (used == value.size() && v >= 0 && v <= 1000000) return int(v);
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " needs a non-negative integer, got '" + value + "'");
}

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--input") {
      std::string v = value();
      size_t eq = v.find('=');
      if (eq == std::string::npos || eq == 0) throw UsageError("--input needs NAME=file.npy, got '" + v + "'");
      a.input_files[v.substr(0, eq)] = v.substr(eq + 1);
    } else if (arg == "--random") {
      std::string v = value();
      try {
        size_t used = 0;
        a.seed = std::stoull(v, &used);
        if (used != v.size()) throw std::invalid_argument(v);
      } catch (const std::exception&) {
        throw UsageError("--random needs an integer seed, got '" + v + "'");
      }
      a.seed_given = true;
    } else if (arg == "--output-dir") {
      a.output_dir = value();
    } else if (arg == "--warmup") {
      a.warmup = ParseCount(arg, value());
    } else if (arg == "--repeat") {
      a.repeat = ParseCount(arg, value());
    } else if (arg == "--threads") {
      a.threads = ParseCount(arg, value());
    } else if (arg == "--json") {
      a.json = true;
    } else if (arg == "--swap-to") {
      a.swap_to = value();
    } else if (arg == "--force-swap") {
      a.force_swap = true;
    } else if (!arg.empty() && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else if (a.artifact.empty()) {
      a.artifact = arg;
    } else {
      throw UsageError("unexpected argument '" + arg + "' (one artifact directory only)");
    }
  }
  if (a.artifact.empty()) throw UsageError("missing ARTIFACT_DIR");
  if (a.seed_given && !a.input_files.empty()) throw UsageError("give either --input or --random, not both");
  if (a.force_swap && a.swap_to.empty()) throw UsageError("--force-swap needs --swap-to DIR");
  return a;
}

// splitmix64: the same numbers on every platform and compiler.
uint64_t NextRandom(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Floats uniform in [-1, 1); integers and bools in {0, 1} (valid indices for any embedding).
autoglm::HostTensor RandomTensor(const autoglm::TensorInfo& info, uint64_t* state) {
  autoglm::HostTensor t(info.dtype, info.shape);
  const int64_t n = t.num_elements();
  for (int64_t i = 0; i < n; ++i) {
    uint64_t r = NextRandom(state);
    double u = double(r >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
    if (info.dtype == "float32") {
      t.as<float>()[i] = float(u);
    } else if (info.dtype == "float64") {
      t.as<double>()[i] = u;
    } else if (info.dtype == "float16" || info.dtype == "bfloat16") {
      t.as<uint16_t>()[i] = 0;  // 0.0 in both encodings
    } else {
      // little-endian: setting the lowest byte to 0 or 1 gives 0 or 1 for every integer width
      t.data[size_t(i) * autoglm::DTypeSize(info.dtype)] = uint8_t(r & 1);
    }
  }
  return t;
}

// VmHWM from /proc/self/status in bytes, or -1 where unavailable.
long long PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return -1;
}

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6f", v);
  return buf;
}

std::string ShapeJson(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string SafeFileName(const std::string& name) {
  std::string out;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '.';
    out.push_back(ok ? c : '_');
  }
  if (out.empty() || out[0] == '.') out = "_" + out;
  return out;
}

int Main(const Args& args) {
  autoglm::RuntimeOptions options;
  options.num_threads = args.threads;
  autoglm::Runtime rt(args.artifact, options);
  const std::string first_artifact = rt.artifact_dir();
  if (!args.swap_to.empty()) rt.Swap(args.swap_to, args.force_swap);

  std::string input_names;
  for (const auto& info : rt.inputs()) input_names += (input_names.empty() ? "" : ", ") + info.name;
  for (const auto& kv : args.input_files) {
    bool known = false;
    for (const auto& info : rt.inputs()) known |= info.name == kv.first;
    if (!known) throw UsageError("the model has no input '" + kv.first + "' (its inputs: " + input_names + ")");
  }
  std::vector<autoglm::HostTensor> inputs;
  std::vector<std::string> sources;
  uint64_t state = args.seed;
  for (const auto& info : rt.inputs()) {
    if (args.input_files.empty()) {
      inputs.push_back(RandomTensor(info, &state));
      sources.push_back("random:" + std::to_string(args.seed));
      continue;
    }
    auto it = args.input_files.find(info.name);
    if (it == args.input_files.end()) throw UsageError("no --input given for input '" + info.name + "'");
    inputs.push_back(autoglm::ReadNpy(it->second));
    sources.push_back(it->second);
  }

  const auto start = std::chrono::steady_clock::now();
  std::vector<autoglm::HostTensor> outputs = rt.Run(inputs);
  const double first_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  std::vector<double> latencies;
  if (args.repeat > 0) latencies = rt.Time(inputs, args.warmup, args.repeat);
  const autoglm::LatencyStats stats = autoglm::Summarize(latencies);

  std::vector<std::string> names, paths;
  for (size_t i = 0; i < outputs.size(); ++i) {
    names.push_back(i < rt.outputs().size() ? rt.outputs()[i].name : "output" + std::to_string(i));
    if (!args.output_dir.empty()) {
      paths.push_back(args.output_dir + "/" + SafeFileName(names.back()) + ".npy");
      autoglm::WriteNpy(paths.back(), outputs[i]);
    } else {
      paths.push_back("");
    }
  }
  const long long rss = PeakRssBytes();

  std::ostringstream o;
  if (args.json) {
    o << "{\"schema\": \"autoglm-runner/1\", \"artifact\": " << JsonQuote(rt.artifact_dir())
      << ", \"target\": " << JsonQuote(rt.target_name()) << ", \"arch\": " << JsonQuote(rt.arch())
      << ", \"device\": " << JsonQuote(rt.device())
      << ", \"runtime_arch\": " << JsonQuote(autoglm::Runtime::BuildArch())
      << ", \"threads\": " << args.threads << ", \"load_ms\": " << Num(rt.load_ms())
      << ", \"first_inference_ms\": " << Num(first_ms) << ", \"warmup\": " << args.warmup
      << ", \"swapped_from\": " << (args.swap_to.empty() ? "null" : JsonQuote(first_artifact))
      << ", \"validation_accuracy\": " << (rt.validation_accuracy() >= 0 ? Num(rt.validation_accuracy()) : "null")
      << ", \"repeat\": " << args.repeat << ", \"latencies_ms\": [";
    for (size_t i = 0; i < latencies.size(); ++i) o << (i ? ", " : "") << Num(latencies[i]);
    o << "], \"latency_ms\": ";
    if (stats.count == 0) {
      o << "null";
    } else {
      o << "{\"count\": " << stats.count << ", \"mean\": " << Num(stats.mean) << ", \"std\": " << Num(stats.std)
        << ", \"min\": " << Num(stats.min) << ", \"max\": " << Num(stats.max) << ", \"p50\": " << Num(stats.p50)
        << ", \"p90\": " << Num(stats.p90) << ", \"p95\": " << Num(stats.p95) << ", \"p99\": " << Num(stats.p99)
        << "}";
    }
    o << ", \"throughput_per_s\": " << (stats.count ? Num(1000.0 / stats.mean) : "null");
    o << ", \"peak_rss_bytes\": " << (rss >= 0 ? std::to_string(rss) : "null") << ", \"inputs\": [";
    for (size_t i = 0; i < inputs.size(); ++i) {
      const auto& info = rt.inputs()[i];
      o << (i ? ", " : "") << "{\"name\": " << JsonQuote(info.name) << ", \"shape\": " << ShapeJson(info.shape)
        << ", \"dtype\": " << JsonQuote(info.dtype) << ", \"source\": " << JsonQuote(sources[i]) << "}";
    }
    o << "], \"outputs\": [";
    for (size_t i = 0; i < outputs.size(); ++i) {
      o << (i ? ", " : "") << "{\"name\": " << JsonQuote(names[i]) << ", \"shape\": " << ShapeJson(outputs[i].shape)
        << ", \"dtype\": " << JsonQuote(outputs[i].dtype)
        << ", \"path\": " << (paths[i].empty() ? "null" : JsonQuote(paths[i])) << "}";
    }
    o << "]}\n";
  } else {
    if (!args.swap_to.empty()) o << "swapped    from " << first_artifact << "\n";
    o << "artifact   " << rt.artifact_dir() << " (target " << rt.target_name() << ", " << rt.arch() << ", "
      << rt.device() << ")\n"
      << "load       " << Num(rt.load_ms()) << " ms\n"
      << "first run  " << Num(first_ms) << " ms\n";
    if (stats.count) {
      o << "latency    mean " << Num(stats.mean) << " ms, p50 " << Num(stats.p50) << ", p90 " << Num(stats.p90)
        << ", p99 " << Num(stats.p99) << ", min " << Num(stats.min) << ", max " << Num(stats.max) << ", std "
        << Num(stats.std) << " (" << stats.count << " runs after " << args.warmup << " warm-up)\n";
    }
    if (rss >= 0) o << "peak RSS   " << Num(double(rss) / (1024.0 * 1024.0)) << " MiB\n";
    for (size_t i = 0; i < outputs.size(); ++i) {
      o << "output     " << names[i] << " " << outputs[i].dtype << " " << ShapeJson(outputs[i].shape);
      if (!paths[i].empty()) o << " -> " << paths[i];
      o << "\n";
    }
  }
  std::cout << o.str() << std::flush;
  return 0;
}

int Fail(bool json, const char* type, const std::string& message, int code) {
  std::cerr << "autoglm-runner: error: " << message << "\n";
  if (json) {
    std::cout << "{\"schema\": \"autoglm-runner/1\", \"error\": {\"type\": " << JsonQuote(type)
              << ", \"message\": " << JsonQuote(message) << "}}\n" << std::flush;
  }
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  for (int i = 1; i < argc; ++i) json |= std::string(argv[i]) == "--json";
  Args args;
  try {
    args = ParseArgs(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << kUsage;
    return Fail(json, "UsageError", e.what(), 2);
  }
  try {
    return Main(args);
  } catch (const UsageError& e) {
    return Fail(json, "UsageError", e.what(), 2);
  } catch (const autoglm::InputError& e) {
    return Fail(json, "UsageError", e.what(), 2);
  } catch (const autoglm::ManifestError& e) {
    return Fail(json, "ManifestError", e.what(), 3);
  } catch (const autoglm::ChecksumError& e) {
    return Fail(json, "ChecksumError", e.what(), 4);
  } catch (const autoglm::ArchMismatchError& e) {
    return Fail(json, "ArchMismatchError", e.what(), 5);
  } catch (const autoglm::SwapRefusedError& e) {
    return Fail(json, "SwapRefusedError", e.what(), 6);
  } catch (const std::exception& e) {
    return Fail(json, "Error", e.what(), 1);
  }
}
