#include "core/python_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <vector>

#include <peft/error.h>

namespace peft::detail {

struct PythonRegex::Compiled {
  pcre2_code* code = nullptr;
  pcre2_match_context* context = nullptr;
  uint32_t match_options = 0;
  ~Compiled() {
    if (context) pcre2_match_context_free(context);
    if (code) pcre2_code_free(code);
  }
};

PythonRegex::PythonRegex(const std::string& pattern, Anchor anchor, const std::string& what)
    : pattern_(pattern), what_(what), compiled_(std::make_shared<Compiled>()) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
  compiled_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                                  &error_code, &error_offset, nullptr);
  if (!compiled_->code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    throw ConfigError(what + ": invalid regular expression '" + pattern + "' at offset " +
                      std::to_string(error_offset) + ": " + reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(compiled_->code, PCRE2_JIT_COMPLETE);  // best effort: the interpreter works without it
  compiled_->context = pcre2_match_context_create(nullptr);
  pcre2_set_match_limit(compiled_->context, 10'000'000);
  pcre2_set_depth_limit(compiled_->context, 100'000);
  compiled_->match_options = anchor == Anchor::Full    ? (PCRE2_ANCHORED | PCRE2_ENDANCHORED)
                             : anchor == Anchor::Start ? PCRE2_ANCHORED
                                                       : 0;
}

std::optional<std::string> PythonRegex::group(const std::string& subject, int group) const {
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(compiled_->code, nullptr);
  if (!data) throw std::bad_alloc();
  const int rc = pcre2_match(compiled_->code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), 0,
                             compiled_->match_options, data, compiled_->context);
  std::optional<std::string> out;
  if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT) {
    pcre2_match_data_free(data);
    throw ConfigError(what_ + ": the regular expression '" + pattern_ + "' needs too much backtracking on '" +
                      subject + "'; simplify it");
  }
  if (rc > group) {
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    if (ovector[2 * group] != PCRE2_UNSET) {
      out = subject.substr(ovector[2 * group], ovector[2 * group + 1] - ovector[2 * group]);
    }
  }
  pcre2_match_data_free(data);
  return out;
}

bool PythonRegex::matches(const std::string& subject) const { return group(subject, 0).has_value(); }

namespace {

// One piece of a parsed replacement template: literal text, or a group's match.
struct TemplatePart {
  std::string literal;
  int group = -1;
};

bool is_octal(char c) { return c >= '0' && c <= '7'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

std::pair<std::string, size_t> PythonRegex::subn(const std::string& replacement, const std::string& subject) const {
  uint32_t group_count = 0;
  pcre2_pattern_info(compiled_->code, PCRE2_INFO_CAPTURECOUNT, &group_count);
  auto bad = [&](const std::string& why) {
    return ConfigError(what_ + ": replacement '" + replacement + "' for '" + pattern_ + "': " + why);
  };
  auto check_group = [&](long index) -> int {
    if (index < 0 || index > static_cast<long>(group_count)) throw bad("invalid group reference " + std::to_string(index));
    return static_cast<int>(index);
  };
  // Python's sre_parse.parse_template.
  std::vector<TemplatePart> parts(1);
  auto literal = [&](const std::string& text) {
    if (parts.back().group >= 0) parts.emplace_back();
    parts.back().literal += text;
  };
  auto group_part = [&](int index) {
    TemplatePart part;
    part.group = index;
    parts.push_back(part);
  };
  const std::string& t = replacement;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] != '\\') {
      literal(std::string(1, t[i]));
      continue;
    }
    if (i + 1 >= t.size()) throw bad("bad escape (end of pattern)");
    const char c = t[++i];
    if (c == 'g') {
      if (i + 1 >= t.size() || t[i + 1] != '<') throw bad("missing <");
      const size_t close = t.find('>', i + 2);
      if (close == std::string::npos) throw bad("missing >, unterminated name");
      const std::string name = t.substr(i + 2, close - i - 2);
      if (name.empty()) throw bad("missing group name");
      if (std::all_of(name.begin(), name.end(), is_digit)) {
        group_part(check_group(std::stol(name)));
      } else {
        const int number = pcre2_substring_number_from_name(compiled_->code, reinterpret_cast<PCRE2_SPTR>(name.c_str()));
        if (number < 0) throw bad("unknown group name '" + name + "'");
        group_part(number);
      }
      i = close;
    } else if (c == '0') {
      // \0 and up to two more octal digits: a character.
      int value = 0;
      size_t n = 0;
      while (n < 2 && i + 1 < t.size() && is_octal(t[i + 1])) value = value * 8 + (t[++i] - '0'), ++n;
      literal(std::string(1, static_cast<char>(value)));
    } else if (is_digit(c)) {
      if (i + 2 < t.size() && is_octal(c) && is_octal(t[i + 1]) && is_octal(t[i + 2])) {
        const int value = (c - '0') * 64 + (t[i + 1] - '0') * 8 + (t[i + 2] - '0');
        if (value > 0377) throw bad("octal escape value \\" + t.substr(i, 3) + " outside of range 0-0o377");
        literal(std::string(1, static_cast<char>(value)));
        i += 2;
      } else {
        long index = c - '0';
        if (i + 1 < t.size() && is_digit(t[i + 1])) index = index * 10 + (t[++i] - '0');
        group_part(check_group(index));
      }
    } else {
      static const std::string escapes = "abfnrtv\\";
      static const std::string values = "\a\b\f\n\r\t\v\\";
      const size_t e = escapes.find(c);
      if (e != std::string::npos) {
        literal(std::string(1, values[e]));
      } else if (std::isalpha(static_cast<unsigned char>(c)) && static_cast<unsigned char>(c) < 0x80) {
        throw bad(std::string("bad escape \\") + c);
      } else {
        literal(std::string("\\") + c);  // Python keeps unknown non-letter escapes as they are
      }
    }
  }

  pcre2_match_data* data = pcre2_match_data_create_from_pattern(compiled_->code, nullptr);
  if (!data) throw std::bad_alloc();
  std::string out;
  size_t count = 0;
  size_t copied = 0;  // subject[copied:] not yet in `out`
  size_t start = 0;
  bool must_advance = false;  // the last match was empty: no empty match at the same place (Python's must_advance)
  while (start <= subject.size()) {
    const int rc = pcre2_match(compiled_->code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), start,
                               compiled_->match_options | (must_advance ? PCRE2_NOTEMPTY_ATSTART : 0), data,
                               compiled_->context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(data);
      if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT) {
        throw ConfigError(what_ + ": the regular expression '" + pattern_ + "' needs too much backtracking on '" +
                          subject + "'; simplify it");
      }
      throw ConfigError(what_ + ": matching '" + pattern_ + "' on '" + subject + "' failed (PCRE2 error " +
                        std::to_string(rc) + ")");
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data);
    out.append(subject, copied, ov[0] - copied);
    for (const TemplatePart& part : parts) {
      if (part.group < 0) {
        out += part.literal;
      } else if (part.group < rc && ov[2 * part.group] != PCRE2_UNSET) {
        out.append(subject, ov[2 * part.group], ov[2 * part.group + 1] - ov[2 * part.group]);
      }  // a group that did not take part gives "" (Python 3.5+)
    }
    ++count;
    copied = ov[1];
    must_advance = ov[0] == ov[1];
    start = ov[1];
  }
  pcre2_match_data_free(data);
  out.append(subject, copied, std::string::npos);
  return {out, count};
}

std::string regex_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    const bool plain = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || static_cast<unsigned char>(c) >= 0x80;
    if (!plain) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace peft::detail
