// Shared by the fuzz targets: a parser may reject its input only with core::Error (a message for the user)
// or a JSON parse error; anything else (another exception, a crash, a sanitizer report) is a finding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

#define ZL_FUZZ_BODY(code)                                                    \
  try {                                                                       \
    code;                                                                     \
  } catch (const zerolora::core::Error&) {                                    \
  } catch (const nlohmann::json::exception& e) {                              \
    /* only the parse step may throw this: accessors must be checked */      \
    if (std::string(e.what()).find("parse_error") == std::string::npos) {     \
      std::fprintf(stderr, "unchecked JSON access: %s\n", e.what());          \
      std::abort();                                                           \
    }                                                                         \
  }

inline std::string fuzz_text(const uint8_t* data, size_t size) { return std::string(reinterpret_cast<const char*>(data), size); }
