// UTF-8 checks shared by the tokenizer readers (runtime/tokenizer.cc, formats/sentencepiece_model.cc).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace compress {

// Bytes of the UTF-8 sequence a lead byte starts: 1-4, or 0 for a byte that cannot lead.
inline size_t Utf8Len(unsigned char c) {
  return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
}

// Offset of the first invalid UTF-8 sequence (a bad lead or continuation byte, a truncated or
// two-byte overlong sequence), or npos.
inline size_t InvalidUtf8At(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = Utf8Len(c);
    if (n == 0 || i + n > s.size()) return i;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return i;
    if (n == 2 && c < 0xC2) return i;  // overlong
    i += n;
  }
  return std::string::npos;
}

}  // namespace compress
