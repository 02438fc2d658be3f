// Shared by the fuzz targets: a parser may reject its input only with core::Error (a message for the user);
// anything else (another exception, a crash, a sanitizer report) is a finding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

#define ZL_FUZZ_BODY(...)                                                     \
  try {                                                                       \
    __VA_ARGS__;                                                              \
  } catch (const zerolora::core::Error&) {                                    \
  } catch (const std::exception& e) {                                         \
    /* anything but core::Error escaping a parser is a finding */            \
    std::fprintf(stderr, "exception escaped the parser: %s\n", e.what());     \
    std::abort();                                                             \
  }

inline std::string fuzz_text(const uint8_t* data, size_t size) { return std::string(reinterpret_cast<const char*>(data), size); }
