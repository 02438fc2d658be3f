#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace zerolora::tokenizer {

namespace {

constexpr char32_t kReplacement = 0xFFFD;

// Hangul syllables compose and decompose by arithmetic (Unicode §3.12), not by table.
constexpr char32_t kHangulS = 0xAC00, kHangulL = 0x1100, kHangulV = 0x1161, kHangulT = 0x11A7;
constexpr int kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr int kHangulNCount = kHangulVCount * kHangulTCount, kHangulSCount = kHangulLCount * kHangulNCount;

template <typename Range>
bool in_ranges(const Range* ranges, size_t count, char32_t cp) {
  const Range* end = ranges + count;
  const Range* it = std::upper_bound(ranges, end, cp, [](char32_t c, const Range& r) { return c < r.first; });
  return it != ranges && cp <= (it - 1)->last;
}

// Letter/number flags for the Basic Multilingual Plane, looked up once per code point in the hot
// pre-tokenizer loop; planes above fall back to binary search.
enum : uint8_t { kLetterFlag = 1, kNumberFlag = 2 };
const std::array<uint8_t, 0x10000>& bmp_flags() {
  static const std::array<uint8_t, 0x10000> table = [] {
    std::array<uint8_t, 0x10000> t{};
    for (size_t i = 0; i < unicode_data::letter_ranges_count; ++i)
      for (char32_t c = unicode_data::letter_ranges[i].first; c <= unicode_data::letter_ranges[i].last && c < 0x10000; ++c)
        t[c] |= kLetterFlag;
    for (size_t i = 0; i < unicode_data::number_ranges_count; ++i)
      for (char32_t c = unicode_data::number_ranges[i].first; c <= unicode_data::number_ranges[i].last && c < 0x10000; ++c)
        t[c] |= kNumberFlag;
    return t;
  }();
  return table;
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 when it is not valid.
size_t valid_sequence_length(std::string_view s, size_t i, char32_t* cp_out) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) { *cp_out = b0; return 1; }
  size_t len;
  char32_t cp, min;
  if ((b0 & 0xE0) == 0xC0) { len = 2; cp = b0 & 0x1F; min = 0x80; }
  else if ((b0 & 0xF0) == 0xE0) { len = 3; cp = b0 & 0x0F; min = 0x800; }
  else if ((b0 & 0xF8) == 0xF0) { len = 4; cp = b0 & 0x07; min = 0x10000; }
  else return 0;
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  *cp_out = cp;
  return len;
}

const unicode_data::Decomposition* find_decomposition(char32_t cp) {
  const auto* begin = unicode_data::decompositions;
  const auto* end = begin + unicode_data::decompositions_count;
  const auto* it = std::lower_bound(begin, end, cp, [](const unicode_data::Decomposition& d, char32_t c) { return d.cp < c; });
  return (it != end && it->cp == cp) ? it : nullptr;
}

void decompose_into(char32_t cp, std::u32string& out) {
  if (cp >= kHangulS && cp < kHangulS + kHangulSCount) {
    const int s = static_cast<int>(cp - kHangulS);
    out.push_back(kHangulL + s / kHangulNCount);
    out.push_back(kHangulV + (s % kHangulNCount) / kHangulTCount);
    if (s % kHangulTCount) out.push_back(kHangulT + s % kHangulTCount);
    return;
  }
  if (const auto* d = find_decomposition(cp)) {
    out.append(unicode_data::decomposition_codepoints + d->offset, d->length);
  } else {
    out.push_back(cp);
  }
}

// The primary composite of (first, second), or 0 when there is none.
char32_t compose_pair(char32_t first, char32_t second) {
  if (first >= kHangulL && first < kHangulL + kHangulLCount && second >= kHangulV && second < kHangulV + kHangulVCount)
    return kHangulS + ((first - kHangulL) * kHangulVCount + (second - kHangulV)) * kHangulTCount;
  if (first >= kHangulS && first < kHangulS + kHangulSCount && (first - kHangulS) % kHangulTCount == 0 &&
      second > kHangulT && second < kHangulT + kHangulTCount)
    return first + (second - kHangulT);
  const auto* begin = unicode_data::compositions;
  const auto* end = begin + unicode_data::compositions_count;
  const auto* it = std::lower_bound(begin, end, std::make_pair(first, second),
                                    [](const unicode_data::Composition& c, const std::pair<char32_t, char32_t>& key) {
                                      return std::make_pair(c.first, c.second) < key;
                                    });
  return (it != end && it->first == first && it->second == second) ? it->composite : 0;
}

}  // namespace

std::vector<DecodedCodepoint> decode_utf8(std::string_view text) {
  std::vector<DecodedCodepoint> out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    char32_t cp;
    size_t len = valid_sequence_length(text, i, &cp);
    if (len == 0) { cp = kReplacement; len = 1; }
    out.push_back({cp, static_cast<uint32_t>(i)});
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view bytes) {
  size_t i = 0;
  char32_t cp;
  while (i < bytes.size()) {
    size_t len = valid_sequence_length(bytes, i, &cp);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string make_valid_utf8(std::string_view bytes) {
  if (is_valid_utf8(bytes)) return std::string(bytes);
  std::string out;
  out.reserve(bytes.size() + 8);
  size_t i = 0;
  while (i < bytes.size()) {
    char32_t cp;
    size_t len = valid_sequence_length(bytes, i, &cp);
    if (len == 0) {
      append_utf8(out, kReplacement);
      i += 1;
    } else {
      out.append(bytes.substr(i, len));
      i += len;
    }
  }
  return out;
}

bool is_letter(char32_t cp) {
  if (cp < 0x10000) return bmp_flags()[cp] & kLetterFlag;
  return in_ranges(unicode_data::letter_ranges, unicode_data::letter_ranges_count, cp);
}

bool is_number(char32_t cp) {
  if (cp < 0x10000) return bmp_flags()[cp] & kNumberFlag;
  return in_ranges(unicode_data::number_ranges, unicode_data::number_ranges_count, cp);
}

bool is_whitespace(char32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* runs = unicode_data::combining_class_runs;
  const auto* end = runs + unicode_data::combining_class_runs_count;
  const auto* it = std::upper_bound(runs, end, cp, [](char32_t c, const unicode_data::CombiningClassRun& r) { return c < r.first; });
  return (it != runs && cp <= (it - 1)->last) ? (it - 1)->ccc : 0;
}

std::string nfc(std::string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(text);

  std::u32string decomposed;
  decomposed.reserve(text.size());
  for (const auto& d : decode_utf8(text)) decompose_into(d.cp, decomposed);

  // Canonical ordering: a stable sort by combining class within each run of non-starters.
  std::vector<uint8_t> classes(decomposed.size());
  for (size_t i = 0; i < decomposed.size(); ++i) classes[i] = combining_class(decomposed[i]);
  for (size_t i = 0; i < decomposed.size();) {
    if (classes[i] == 0) { ++i; continue; }
    size_t j = i;
    while (j < decomposed.size() && classes[j] != 0) ++j;
    for (size_t a = i + 1; a < j; ++a)  // insertion sort: runs are a few marks long
      for (size_t b = a; b > i && classes[b - 1] > classes[b]; --b) {
        std::swap(classes[b - 1], classes[b]);
        std::swap(decomposed[b - 1], decomposed[b]);
      }
    i = j;
  }

  // Canonical composition: each character joins the last starter unless a character between them
  // blocks it (one of class 0, or of a class not lower than its own).
  std::u32string composed;
  composed.reserve(decomposed.size());
  long starter = -1;
  uint8_t last_class = 0;
  for (size_t i = 0; i < decomposed.size(); ++i) {
    const char32_t c = decomposed[i];
    const uint8_t cls = classes[i];
    if (starter >= 0) {
      const bool adjacent = static_cast<long>(composed.size()) - 1 == starter;
      if (adjacent || (last_class != 0 && last_class < cls)) {
        if (char32_t comp = compose_pair(composed[starter], c)) {
          composed[starter] = comp;
          continue;
        }
      }
    }
    if (cls == 0) starter = static_cast<long>(composed.size());
    last_class = cls;
    composed.push_back(c);
  }

  std::string out;
  out.reserve(text.size());
  for (char32_t c : composed) append_utf8(out, c);
  return out;
}

}  // namespace zerolora::tokenizer
