// Open-AutoGLM Edge stand-in for <tvm/support/serializer.h>, which the apache-tvm wheel's headers
// include but do not ship. Written for this project, not taken from TVM.
//
// The byte layout must equal the one libtvm writes on the compiling machine, because the Relax VM
// executable inside model.so is serialized there and read here: numbers are stored as their
// little-endian bytes at their own width (so only fixed-width fields cross machines; TVM writes
// counts as uint64_t), strings and sequences as a uint64_t count followed by the items, maps as a
// count followed by key/value pairs, DLDataType as code:u8 bits:u8 lanes:u16, DLDevice as two int32.
#ifndef TVM_SUPPORT_SERIALIZER_H_
#define TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

// Every machine this project builds for (x86_64, aarch64, armv7) is little-endian: no byte swapping.
static_assert(TVM_FFI_LITTLE_ENDIAN, "this serializer stand-in supports little-endian machines only");

namespace tvm {
namespace support {

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const T& v) { s->Write(&v, sizeof(T)); }
  static bool Read(Stream* s, T* v) { return s->Read(v, sizeof(T)) == sizeof(T); }
};

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  using U = std::underlying_type_t<T>;
  static void Write(Stream* s, const T& v) { Serializer<U>::Write(s, static_cast<U>(v)); }
  static bool Read(Stream* s, T* v) {
    U u;
    if (!Serializer<U>::Read(s, &u)) return false;
    *v = static_cast<T>(u);
    return true;
  }
};

namespace detail {
// A uint64_t count; false when it is missing or cannot be a size here (32-bit machines).
inline bool ReadCount(Stream* s, size_t* count) {
  uint64_t n;
  if (!Serializer<uint64_t>::Read(s, &n) || n > static_cast<uint64_t>(SIZE_MAX)) return false;
  *count = static_cast<size_t>(n);
  return true;
}
inline void WriteBytes(Stream* s, const char* data, size_t size) {
  Serializer<uint64_t>::Write(s, static_cast<uint64_t>(size));
  if (size != 0) s->Write(data, size);
}
inline bool ReadBytes(Stream* s, std::string* out) {
  size_t n;
  if (!ReadCount(s, &n)) return false;
  out->resize(n);
  return n == 0 || s->Read(&(*out)[0], n) == n;
}
}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::string& v) { detail::WriteBytes(s, v.data(), v.size()); }
  static bool Read(Stream* s, std::string* v) { return detail::ReadBytes(s, v); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::String& v) { detail::WriteBytes(s, v.data(), v.size()); }
  static bool Read(Stream* s, ffi::String* v) {
    std::string tmp;
    if (!detail::ReadBytes(s, &tmp)) return false;
    *v = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::vector<T>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    for (const T& item : v) Serializer<T>::Write(s, item);
  }
  static bool Read(Stream* s, std::vector<T>* v) {
    size_t n;
    if (!detail::ReadCount(s, &n)) return false;
    if constexpr (std::is_arithmetic_v<T>) {  // e.g. the VM's instruction words: one block
      if (n > SIZE_MAX / sizeof(T)) return false;
      v->resize(n);
      return n == 0 || s->Read(v->data(), n * sizeof(T)) == n * sizeof(T);
    }
    v->clear();
    for (size_t i = 0; i < n; ++i) {
      T item;
      if (!Serializer<T>::Read(s, &item)) return false;
      v->push_back(std::move(item));
    }
    return true;
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Array<T>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    for (const T& item : v) Serializer<T>::Write(s, item);
  }
  static bool Read(Stream* s, ffi::Array<T>* v) {
    size_t n;
    if (!detail::ReadCount(s, &n)) return false;
    *v = ffi::Array<T>();
    for (size_t i = 0; i < n; ++i) {
      T item;
      if (!Serializer<T>::Read(s, &item)) return false;
      v->push_back(std::move(item));
    }
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::pair<A, B>& v) {
    Serializer<A>::Write(s, v.first);
    Serializer<B>::Write(s, v.second);
  }
  static bool Read(Stream* s, std::pair<A, B>* v) {
    return Serializer<A>::Read(s, &v->first) && Serializer<B>::Read(s, &v->second);
  }
};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const std::unordered_map<K, V>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    for (const auto& kv : v) {
      Serializer<K>::Write(s, kv.first);
      Serializer<V>::Write(s, kv.second);
    }
  }
  static bool Read(Stream* s, std::unordered_map<K, V>* v) {
    size_t n;
    if (!detail::ReadCount(s, &n)) return false;
    v->clear();
    for (size_t i = 0; i < n; ++i) {
      std::pair<K, V> kv;
      if (!Serializer<std::pair<K, V>>::Read(s, &kv)) return false;
      v->insert(std::move(kv));
    }
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const ffi::Map<K, V>& v) {
    Serializer<uint64_t>::Write(s, static_cast<uint64_t>(v.size()));
    for (const auto& kv : v) {
      Serializer<K>::Write(s, kv.first);
      Serializer<V>::Write(s, kv.second);
    }
  }
  static bool Read(Stream* s, ffi::Map<K, V>* v) {
    size_t n;
    if (!detail::ReadCount(s, &n)) return false;
    *v = ffi::Map<K, V>();
    for (size_t i = 0; i < n; ++i) {
      K key;
      V value;
      if (!Serializer<K>::Read(s, &key) || !Serializer<V>::Read(s, &value)) return false;
      v->Set(std::move(key), std::move(value));
    }
    return true;
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDataType& v) {
    Serializer<uint8_t>::Write(s, v.code);
    Serializer<uint8_t>::Write(s, v.bits);
    Serializer<uint16_t>::Write(s, v.lanes);
  }
  static bool Read(Stream* s, DLDataType* v) {
    return Serializer<uint8_t>::Read(s, &v->code) && Serializer<uint8_t>::Read(s, &v->bits) &&
           Serializer<uint16_t>::Read(s, &v->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* s, const DLDevice& v) {
    Serializer<int32_t>::Write(s, static_cast<int32_t>(v.device_type));
    Serializer<int32_t>::Write(s, v.device_id);
  }
  static bool Read(Stream* s, DLDevice* v) {
    int32_t type;
    if (!Serializer<int32_t>::Read(s, &type) || !Serializer<int32_t>::Read(s, &v->device_id)) return false;
    v->device_type = static_cast<DLDeviceType>(type);
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SERIALIZER_H_
