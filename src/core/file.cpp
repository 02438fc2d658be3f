#include "core/file.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace zerolora::core {

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), path, "cannot be read", "check the path and its permissions");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace zerolora::core
