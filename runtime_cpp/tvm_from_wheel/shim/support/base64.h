// Open-AutoGLM Edge stand-in for TVM's src/support/base64.h (absent from the apache-tvm wheel):
// standard base64 (RFC 4648, '=' padding) over tvm::support::Stream, used by tvm/src/runtime for a
// Tensor's JSON form. Written for this project, not taken from TVM.
#ifndef TVM_SUPPORT_BASE64_H_
#define TVM_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cstdint>

namespace tvm {
namespace support {

namespace base64 {
inline char Encode(uint32_t six) {
  return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[six & 63];
}
// The 6-bit value of a base64 character, or -1.
inline int Decode(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace base64

// Encodes what is written into `out`; Finish() writes the last group and its padding.
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64OutStream(Stream* out) : out_(out) {}

  size_t Write(const void* ptr, size_t size) override {
    const auto* p = static_cast<const uint8_t*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_ = (group_ << 8) | p[i];
      if (++count_ == 3) Flush();
    }
    return size;
  }
  size_t Read(void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    return 0;
  }
  void Finish() {
    if (count_ != 0) Flush();
  }

 private:
  void Flush() {
    uint32_t bits = group_ << (8 * (3 - count_));
    char quad[4] = {base64::Encode(bits >> 18), base64::Encode(bits >> 12),
                    count_ > 1 ? base64::Encode(bits >> 6) : '=', count_ > 2 ? base64::Encode(bits) : '='};
    out_->Write(quad, 4);
    group_ = 0;
    count_ = 0;
  }
  Stream* out_;
  uint32_t group_ = 0;
  int count_ = 0;
};

// Decodes base64 read from `in`, skipping whitespace; ends at '=', at any other character that is
// not base64, or at the end of `in`.
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64InStream(Stream* in) : in_(in) {}
  void InitPosition() {}  // nothing to skip: decoding starts at the first base64 character

  size_t Read(void* ptr, size_t size) override {
    auto* p = static_cast<uint8_t*>(ptr);
    size_t n = 0;
    while (n < size) {
      if (have_ == 0 && !Refill()) break;
      p[n++] = static_cast<uint8_t>(bits_ >> (8 * --have_));
    }
    return n;
  }
  size_t Write(const void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    return 0;
  }

 private:
  // Decodes up to four characters into `bits_` (1 to 3 bytes); false at the end.
  bool Refill() {
    if (done_) return false;
    uint32_t bits = 0;
    int chars = 0;
    char c;
    while (chars < 4 && in_->Read(&c, 1) == 1) {
      if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
      int v = base64::Decode(c);
      if (v < 0) break;
      bits = (bits << 6) | static_cast<uint32_t>(v);
      ++chars;
    }
    if (chars < 4) done_ = true;
    if (chars < 2) return false;
    bits <<= 6 * (4 - chars);
    have_ = chars - 1;
    bits_ = bits >> (8 * (3 - have_));
    return true;
  }
  Stream* in_;
  uint32_t bits_ = 0;
  int have_ = 0;
  bool done_ = false;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BASE64_H_
