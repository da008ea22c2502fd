#include "core/python_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

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
  compiled_->match_options = anchor == Anchor::Full ? (PCRE2_ANCHORED | PCRE2_ENDANCHORED) : PCRE2_ANCHORED;
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
