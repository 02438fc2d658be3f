#include "tokenizer/sentencepiece_model_proto.h"

#include <cstdint>

#include "core/error.h"

namespace zerolora::tokenizer {

namespace {

// sentencepiece_model.proto: ModelProto.normalizer_spec = 3; NormalizerSpec.add_dummy_prefix = 3.
constexpr uint32_t kNormalizerSpecField = 3;
constexpr uint32_t kAddDummyPrefixField = 3;
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

struct WireReader {
  std::string_view data;
  size_t pos = 0;
  bool failed = false;

  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= data.size()) { failed = true; return 0; }
      const auto byte = static_cast<uint8_t>(data[pos++]);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return value;
    }
    failed = true;
    return 0;
  }

  // Skips the value of a field of the given wire type; returns the bytes of the whole field.
  bool skip_value(uint32_t wire_type) {
    switch (wire_type) {
      case kVarint: varint(); break;
      case kFixed64: pos += 8; break;
      case kFixed32: pos += 4; break;
      case kLengthDelimited: {
        const uint64_t len = varint();
        if (len > data.size()) failed = true;
        else pos += len;
        break;
      }
      default: failed = true;
    }
    if (pos > data.size()) failed = true;
    return !failed;
  }
};

void write_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

// Copies a message, dropping every occurrence of field `drop`, and appends `extra` (encoded fields).
bool rewrite_message(std::string_view message, uint32_t drop, const std::string& extra, std::string* out) {
  WireReader r{message};
  while (r.pos < message.size()) {
    const size_t field_begin = r.pos;
    const uint64_t key = r.varint();
    if (r.failed || !r.skip_value(static_cast<uint32_t>(key & 7))) return false;
    if ((key >> 3) != drop) out->append(message.substr(field_begin, r.pos - field_begin));
  }
  out->append(extra);
  return true;
}

}  // namespace

std::string sentencepiece_model_without_dummy_prefix(std::string_view serialized, const std::string& where) {
  std::string add_dummy_prefix_false;
  write_varint(add_dummy_prefix_false, (kAddDummyPrefixField << 3) | kVarint);
  write_varint(add_dummy_prefix_false, 0);

  std::string out;
  out.reserve(serialized.size() + 8);
  WireReader r{serialized};
  bool rewrote = false;
  while (r.pos < serialized.size()) {
    const size_t field_begin = r.pos;
    const uint64_t key = r.varint();
    const auto field = static_cast<uint32_t>(key >> 3);
    const auto wire_type = static_cast<uint32_t>(key & 7);
    if (r.failed) break;
    if (field == kNormalizerSpecField && wire_type == kLengthDelimited) {
      const uint64_t len = r.varint();
      if (r.failed || r.pos + len > serialized.size()) { r.failed = true; break; }
      std::string spec;
      if (!rewrite_message(serialized.substr(r.pos, len), kAddDummyPrefixField, add_dummy_prefix_false, &spec)) {
        r.failed = true;
        break;
      }
      r.pos += len;
      write_varint(out, key);
      write_varint(out, spec.size());
      out += spec;
      rewrote = true;
    } else {
      if (!r.skip_value(wire_type)) break;
      out.append(serialized.substr(field_begin, r.pos - field_begin));
    }
  }
  core::check(!r.failed, where, "is not a SentencePiece model (protobuf parse failed)",
              "point --model_name_or_path at a folder whose tokenizer.model is a SentencePiece model");
  if (!rewrote) {  // no normalizer_spec at all: add one holding only the flag
    write_varint(out, (kNormalizerSpecField << 3) | kLengthDelimited);
    write_varint(out, add_dummy_prefix_false.size());
    out += add_dummy_prefix_false;
  }
  return out;
}

}  // namespace zerolora::tokenizer
