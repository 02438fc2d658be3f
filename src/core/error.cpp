#include "core/error.h"

namespace zerolora::core {

static std::string format_error(const std::string& where, const std::string& what,
                                const std::string& fix) {
  std::string msg = where.empty() ? what : where + ": " + what;
  if (!fix.empty()) msg += " (fix: " + fix + ")";
  // one line, whatever the parts held
  for (char& c : msg)
    if (c == '\n' || c == '\r') c = ' ';
  return msg;
}

Error::Error(const std::string& where, const std::string& what, const std::string& fix)
    : std::runtime_error(format_error(where, what, fix)) {}

}  // namespace zerolora::core
