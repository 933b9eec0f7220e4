// A small JSON reader (RFC 8259) and string escaper. Written for this project.
#include "json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace autoglm {
namespace detail {

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : s_(text) {}

  JsonValue ParseDocument() {
    JsonValue v = ParseValue(0);
    SkipSpace();
    if (pos_ != s_.size()) Fail("trailing characters after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void Fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON at offset " + std::to_string(pos_) + ": " + what);
  }

  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool Consume(const char* literal) {
    size_t n = std::char_traits<char>::length(literal);
    if (s_.compare(pos_, n, literal) != 0) return false;
    pos_ += n;
    return true;
  }

  JsonValue ParseValue(int depth) {
    if (depth > 256) Fail("nesting too deep");
    SkipSpace();
    if (pos_ >= s_.size()) Fail("unexpected end of input");
    JsonValue v;
    char c = s_[pos_];
    if (c == '{') {
      v.kind_ = JsonValue::Kind::kObject;
      ++pos_;
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return v;
      }
      while (true) {
        SkipSpace();
        if (pos_ >= s_.size() || s_[pos_] != '"') Fail("expected a string key");
        std::string key = ParseString();
        SkipSpace();
        if (pos_ >= s_.size() || s_[pos_] != ':') Fail("expected ':'");
        ++pos_;
        // A repeated key could mean one thing to this reader and another to Python's: refuse it.
        if (v.object_.count(key) != 0) Fail("duplicate key \"" + key + "\"");
        v.object_[key] = ParseValue(depth + 1);
        SkipSpace();
        if (pos_ < s_.size() && s_[pos_] == ',') {
          ++pos_;
        } else if (pos_ < s_.size() && s_[pos_] == '}') {
          ++pos_;
          return v;
        } else {
          Fail("expected ',' or '}'");
        }
      }
    }
    if (c == '[') {
      v.kind_ = JsonValue::Kind::kArray;
      ++pos_;
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        v.array_.push_back(ParseValue(depth + 1));
        SkipSpace();
        if (pos_ < s_.size() && s_[pos_] == ',') {
          ++pos_;
        } else if (pos_ < s_.size() && s_[pos_] == ']') {
          ++pos_;
          return v;
        } else {
          Fail("expected ',' or ']'");
        }
      }
    }
    if (c == '"') {
      v.kind_ = JsonValue::Kind::kString;
      v.string_ = ParseString();
      return v;
    }
    if (Consume("true")) {
      v.kind_ = JsonValue::Kind::kBool;
      v.bool_ = true;
      return v;
    }
    if (Consume("false")) {
      v.kind_ = JsonValue::Kind::kBool;
      return v;
    }
    if (Consume("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) {
      size_t start = pos_;
      if (s_[pos_] == '-') ++pos_;
      auto digits = [&] {
        size_t from = pos_;
        while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
        if (pos_ == from) Fail("expected a digit");
      };
      digits();
      if (pos_ < s_.size() && s_[pos_] == '.') {
        ++pos_;
        digits();
      }
      if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
        ++pos_;
        if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
        digits();
      }
      v.kind_ = JsonValue::Kind::kNumber;
      v.number_ = std::strtod(s_.substr(start, pos_ - start).c_str(), nullptr);
      return v;
    }
    char shown[16];
    if (c >= 0x20 && c < 0x7f) {
      std::snprintf(shown, sizeof(shown), "'%c'", c);
    } else {
      std::snprintf(shown, sizeof(shown), "byte 0x%02x", unsigned(static_cast<unsigned char>(c)));
    }
    Fail(std::string("unexpected ") + shown);
  }

  unsigned ParseHex4() {
    if (pos_ + 4 > s_.size()) Fail("truncated \\u escape");
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_++];
      value <<= 4;
      if (h >= '0' && h <= '9') value |= unsigned(h - '0');
      else if (h >= 'a' && h <= 'f') value |= unsigned(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') value |= unsigned(h - 'A' + 10);
      else Fail("bad hex digit in \\u escape");
    }
    return value;
  }

  static void AppendUtf8(std::string* out, unsigned cp) {
    if (cp < 0x80) {
      out->push_back(char(cp));
    } else if (cp < 0x800) {
      out->push_back(char(0xC0 | (cp >> 6)));
      out->push_back(char(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(char(0xE0 | (cp >> 12)));
      out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(char(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(char(0xF0 | (cp >> 18)));
      out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(char(0x80 | (cp & 0x3F)));
    }
  }

  std::string ParseString() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) Fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) Fail("control character in string");
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) Fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          unsigned cp = ParseHex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (!Consume("\\u")) Fail("unpaired surrogate");
            unsigned low = ParseHex4();
            if (low < 0xDC00 || low >= 0xE000) Fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8(&out, cp);
          break;
        }
        default: Fail(std::string("bad escape '\\") + e + "'");
      }
    }
  }

  const std::string& s_;
  size_t pos_ = 0;
};

// Offset of the first byte that is not part of valid UTF-8, or npos.
static size_t InvalidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size() || (n == 2 && c < 0xC2)) return i;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return i;
    }
    i += n;
  }
  return std::string::npos;
}

JsonValue JsonValue::Parse(const std::string& text) {
  // Python reads manifests as UTF-8; so does this reader (no message ever echoes a stray byte).
  const size_t bad = InvalidUtf8(text);
  if (bad != std::string::npos) {
    throw std::runtime_error("invalid JSON at offset " + std::to_string(bad) + ": not UTF-8 text");
  }
  return JsonParser(text).ParseDocument();
}

namespace {
[[noreturn]] void WrongKind(const char* wanted) {
  throw std::runtime_error(std::string("JSON value is not ") + wanted);
}
}  // namespace

bool JsonValue::as_bool() const {
  if (kind_ != Kind::kBool) WrongKind("a boolean");
  return bool_;
}
double JsonValue::as_number() const {
  if (kind_ != Kind::kNumber) WrongKind("a number");
  return number_;
}
int64_t JsonValue::as_int() const {
  double n = as_number();
  if (std::floor(n) != n || std::fabs(n) > 9.007199254740992e15) WrongKind("an integer");
  return static_cast<int64_t>(n);
}
const std::string& JsonValue::as_string() const {
  if (kind_ != Kind::kString) WrongKind("a string");
  return string_;
}
const std::vector<JsonValue>& JsonValue::as_array() const {
  if (kind_ != Kind::kArray) WrongKind("an array");
  return array_;
}
const std::map<std::string, JsonValue>& JsonValue::as_object() const {
  if (kind_ != Kind::kObject) WrongKind("an object");
  return object_;
}
bool JsonValue::has(const std::string& key) const {
  return kind_ == Kind::kObject && object_.count(key) != 0;
}
const JsonValue& JsonValue::at(const std::string& key) const {
  const auto& obj = as_object();
  auto it = obj.find(key);
  if (it == obj.end()) throw std::runtime_error("missing key \"" + key + "\"");
  return it->second;
}

std::string JsonQuote(const std::string& raw) {
  // Keep the output valid UTF-8 whatever the input (a path from argv may hold any bytes).
  std::string s;
  for (size_t i = 0; i < raw.size();) {
    const size_t bad = InvalidUtf8(raw.substr(i));
    if (bad == std::string::npos) {
      s += raw.substr(i);
      break;
    }
    s += raw.substr(i, bad) + "\xEF\xBF\xBD";  // U+FFFD
    i += bad + 1;
  }
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace detail
}  // namespace autoglm
