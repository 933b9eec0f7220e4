// SHA-256 (FIPS 180-4), written for this project; no third-party code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace autoglm {
namespace detail {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  /*! \brief Finish and return the digest as 64 lowercase hex characters. */
  std::string HexDigest();

 private:
  void Compress(const uint8_t block[64]);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

}  // namespace detail
}  // namespace autoglm
