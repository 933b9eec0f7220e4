// A small JSON reader (RFC 8259) and string escaper, enough for manifest.json and the
// runner's report. Written for this project; no third-party code.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace autoglm {
namespace detail {

class JsonValue {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  /*! \brief Parse a whole document; throws std::runtime_error with the offset on bad input. */
  static JsonValue Parse(const std::string& text);

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_number() const { return kind_ == Kind::kNumber; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_object() const { return kind_ == Kind::kObject; }

  bool as_bool() const;
  double as_number() const;
  /*! \brief The number as an integer; throws if it has a fractional part. */
  int64_t as_int() const;
  const std::string& as_string() const;
  const std::vector<JsonValue>& as_array() const;
  const std::map<std::string, JsonValue>& as_object() const;

  bool has(const std::string& key) const;
  /*! \brief Member `key` of an object; throws if this is not an object or the key is absent. */
  const JsonValue& at(const std::string& key) const;

 private:
  friend class JsonParser;
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<JsonValue> array_;
  std::map<std::string, JsonValue> object_;
};

/*! \brief `s` as a quoted JSON string literal. */
std::string JsonQuote(const std::string& s);

}  // namespace detail
}  // namespace autoglm
