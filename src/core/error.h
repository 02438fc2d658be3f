// One error type for everything a user can cause: a bad file, field, flag or value.
// The message is one line: where the problem is, what it is, and how to fix it.
#pragma once
#include <stdexcept>
#include <string>

namespace zerolora::core {

class Error : public std::runtime_error {
 public:
  // where: a file path, "file:field", "--flag", ...; what: the problem; fix: what the user should do.
  Error(const std::string& where, const std::string& what, const std::string& fix = "");
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws Error(where, what, fix) when cond is false.
inline void check(bool cond, const std::string& where, const std::string& what,
                  const std::string& fix = "") {
  if (!cond) throw Error(where, what, fix);
}

}  // namespace zerolora::core
