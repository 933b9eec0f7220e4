// Reader and writer for NumPy's .npy format (C order, little-endian).
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "autoglm/runtime.h"

namespace autoglm {
namespace {

// numpy descr (after the byte-order character) <-> dtype name
const std::map<std::string, std::string>& DescrToDType() {
  static const std::map<std::string, std::string> kMap = {
      {"b1", "bool"},   {"i1", "int8"},   {"u1", "uint8"},   {"i2", "int16"},   {"u2", "uint16"},
      {"i4", "int32"},  {"u4", "uint32"}, {"i8", "int64"},   {"u8", "uint64"},  {"f2", "float16"},
      {"f4", "float32"}, {"f8", "float64"}};
  return kMap;
}

// The value of `key` in the header dict, as written by numpy: 'key': VALUE,
std::string HeaderField(const std::string& header, const std::string& key, const std::string& path) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw Error(path + ": .npy header lacks '" + key + "'");
  at = header.find(':', at);
  if (at == std::string::npos) throw Error(path + ": malformed .npy header");
  ++at;
  while (at < header.size() && header[at] == ' ') ++at;
  size_t end = at;
  if (header[at] == '(') {
    end = header.find(')', at);
    if (end == std::string::npos) throw Error(path + ": malformed shape in .npy header");
    return header.substr(at, end - at + 1);
  }
  if (header[at] == '\'') {
    end = header.find('\'', at + 1);
    if (end == std::string::npos) throw Error(path + ": malformed .npy header");
    return header.substr(at + 1, end - at - 1);
  }
  while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
  return header.substr(at, end - at);
}

}  // namespace

HostTensor ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path);
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    throw Error(path + " is not a .npy file (bad magic); save arrays with numpy.save");
  }
  int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (uint32_t(b[1]) << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (uint32_t(b[1]) << 8) | (uint32_t(b[2]) << 16) | (uint32_t(b[3]) << 24);
  } else {
    throw Error(path + ": unsupported .npy format version " + std::to_string(major));
  }
  std::string header(header_len, '\0');
  if (!in.read(&header[0], header_len)) throw Error(path + ": truncated .npy header");

  std::string descr = HeaderField(header, "descr", path);
  if (descr.size() < 2 || (descr[0] != '<' && descr[0] != '|' && descr[0] != '=')) {
    throw Error(path + ": dtype '" + descr + "' is not supported (little-endian numeric or bool only)");
  }
  auto dt = DescrToDType().find(descr.substr(1));
  if (dt == DescrToDType().end()) {
    throw Error(path + ": dtype '" + descr + "' is not supported (little-endian numeric or bool only)");
  }
  if (HeaderField(header, "fortran_order", path) != "False") {
    throw Error(path + ": Fortran-ordered arrays are not supported; save np.ascontiguousarray(a)");
  }
  std::string shape_text = HeaderField(header, "shape", path);
  if (shape_text.size() < 2 || shape_text.front() != '(' || shape_text.back() != ')') {
    throw Error(path + ": malformed shape in .npy header");
  }
  std::vector<int64_t> shape;
  std::stringstream ss(shape_text.substr(1, shape_text.size() - 2));
  std::string item;
  uint64_t elements = 1;
  while (std::getline(ss, item, ',')) {
    size_t a = item.find_first_not_of(' '), b = item.find_last_not_of(' ');
    if (a == std::string::npos) continue;
    item = item.substr(a, b - a + 1);
    if (item.size() > 12 || item.find_first_not_of("0123456789") != std::string::npos || shape.size() >= 32) {
      throw Error(path + ": bad dimension '" + item + "' in the .npy header's shape");
    }
    const int64_t d = std::stoll(item);
    shape.push_back(d);
    elements = d == 0 ? 0 : (elements > (uint64_t(1) << 40) / uint64_t(d) ? (uint64_t(1) << 41) : elements * uint64_t(d));
  }
  // Compare with the bytes the file really holds before allocating anything.
  const std::streampos data_start = in.tellg();
  in.seekg(0, std::ios::end);
  const uint64_t available = uint64_t(in.tellg() - data_start);
  in.seekg(data_start);
  if (elements > (uint64_t(1) << 40) || elements * DTypeSize(dt->second) > available) {
    throw Error(path + ": file holds fewer bytes than its shape and dtype need");
  }

  HostTensor t(dt->second, shape);
  if (!in.read(reinterpret_cast<char*>(t.data.data()), std::streamsize(t.data.size()))) {
    throw Error(path + ": file holds fewer bytes than its shape and dtype need");
  }
  return t;
}

void WriteNpy(const std::string& path, const HostTensor& tensor) {
  std::string descr;
  for (const auto& kv : DescrToDType()) {
    if (kv.second == tensor.dtype) descr = (DTypeSize(tensor.dtype) == 1 ? "|" : "<") + kv.first;
  }
  if (descr.empty()) throw Error("cannot write dtype '" + tensor.dtype + "' to .npy");
  std::string shape = "(";
  for (size_t i = 0; i < tensor.shape.size(); ++i) {
    shape += std::to_string(tensor.shape[i]);
    if (i + 1 < tensor.shape.size() || tensor.shape.size() == 1) shape += ",";
    if (i + 1 < tensor.shape.size()) shape += " ";
  }
  shape += ")";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad with spaces so that magic + length + header is a multiple of 64, ending in '\n'.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');

  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error("cannot write " + path);
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.write(magic, 8);
  char len[2] = {char(header.size() & 0xff), char(header.size() >> 8)};
  out.write(len, 2);
  out.write(header.data(), std::streamsize(header.size()));
  out.write(reinterpret_cast<const char*>(tensor.data.data()), std::streamsize(tensor.data.size()));
  if (!out) throw Error("error while writing " + path);
}

}  // namespace autoglm
