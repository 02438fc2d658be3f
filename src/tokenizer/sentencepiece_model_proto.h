// Edits of a serialized SentencePiece ModelProto done on the protobuf wire format, so that neither
// protobuf nor sentencepiece_model.pb.h (not shipped by Debian) is needed.
#pragma once
#include <string>
#include <string_view>

namespace zerolora::tokenizer {

// The model with normalizer_spec.add_dummy_prefix = false: what HF's non-legacy LlamaTokenizer loads
// (transformers get_spm_processor), so that text after a special token gets no "▁" prefix.
// Throws core::Error (naming `where`) if the bytes are not a protobuf message.
std::string sentencepiece_model_without_dummy_prefix(std::string_view serialized, const std::string& where);

}  // namespace zerolora::tokenizer
