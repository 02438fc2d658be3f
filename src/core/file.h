// Whole-file reads with the project's error form.
#pragma once
#include <string>

namespace zerolora::core {

// The bytes of a file; core::Error naming the path when it cannot be read.
std::string read_whole_file(const std::string& path);

}  // namespace zerolora::core
