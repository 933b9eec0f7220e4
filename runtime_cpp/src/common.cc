// Tensor metadata, dtype sizes, latency statistics and file checksums.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>

#include "autoglm/runtime.h"
#include "sha256.h"

namespace autoglm {

size_t DTypeSize(const std::string& dtype) {
  static const std::map<std::string, size_t> kSizes = {
      {"bool", 1},    {"int8", 1},   {"uint8", 1},   {"int16", 2},   {"uint16", 2},
      {"float16", 2}, {"bfloat16", 2}, {"int32", 4}, {"uint32", 4},  {"float32", 4},
      {"int64", 8},   {"uint64", 8}, {"float64", 8}};
  auto it = kSizes.find(dtype);
  if (it == kSizes.end()) {
    throw Error("unsupported dtype '" + dtype +
                "': the runtime handles bool, (u)int8/16/32/64, float16, bfloat16, float32, float64");
  }
  return it->second;
}

static int64_t Product(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

int64_t TensorInfo::num_elements() const { return Product(shape); }
size_t TensorInfo::nbytes() const { return size_t(num_elements()) * DTypeSize(dtype); }

HostTensor::HostTensor(std::string dtype_, std::vector<int64_t> shape_)
    : dtype(std::move(dtype_)), shape(std::move(shape_)) {
  for (int64_t d : shape) {
    if (d < 0) throw Error("negative dimension in tensor shape");
  }
  data.assign(size_t(Product(shape)) * DTypeSize(dtype), 0);
}

int64_t HostTensor::num_elements() const { return Product(shape); }

LatencyStats Summarize(const std::vector<double>& latencies_ms) {
  LatencyStats s;
  s.count = latencies_ms.size();
  if (s.count == 0) return s;
  std::vector<double> sorted = latencies_ms;
  std::sort(sorted.begin(), sorted.end());
  s.min = sorted.front();
  s.max = sorted.back();
  s.mean = std::accumulate(sorted.begin(), sorted.end(), 0.0) / double(s.count);
  double var = 0;
  for (double v : sorted) var += (v - s.mean) * (v - s.mean);
  s.std = std::sqrt(var / double(s.count));
  // Linear interpolation between closest ranks, as numpy.percentile does by default.
  auto pct = [&](double q) {
    double rank = q / 100.0 * double(s.count - 1);
    size_t lo = size_t(std::floor(rank));
    size_t hi = std::min(lo + 1, s.count - 1);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - double(lo));
  };
  s.p50 = pct(50);
  s.p90 = pct(90);
  s.p95 = pct(95);
  s.p99 = pct(99);
  return s;
}

std::string Sha256File(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path);
  detail::Sha256 hash;
  std::vector<char> buf(1 << 16);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    hash.Update(buf.data(), size_t(in.gcount()));
  }
  if (in.bad()) throw Error("error while reading " + path);
  return hash.HexDigest();
}

}  // namespace autoglm
