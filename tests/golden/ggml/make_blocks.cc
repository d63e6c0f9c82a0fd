// Writes blocks.json: for each ggml block type, an input row, the blocks that ggml's own quantizer
// writes for it (ggml_quantize_chunk, no importance matrix) and ggml's decoding of those blocks.
// Built against ggml from llama.cpp's source (make_blocks.sh); only its public API is used.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "ggml.h"
#include "ggml-cpu.h"

int main() {
  const int n = 512;
  std::vector<float> x(n);
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto uniform = [&]() {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return ((state >> 11) + 0.5) / 9007199254740992.0;
  };
  for (int i = 0; i < n; ++i) {
    const double g = std::sqrt(-2 * std::log(uniform())) * std::cos(6.283185307179586 * uniform());
    const double scale = 0.02 * (1 + (i / 64) % 4);  // four magnitudes
    x[i] = static_cast<float>(g * scale);
  }
  x[37] = 0.9f;                                                  // an outlier
  for (int i = 256; i < 288; ++i) x[i] = 0;                       // an all-zero block
  for (int i = 288; i < 320; ++i) x[i] = 0.01f + std::fabs(x[i]);  // an all-positive block
  for (int i = 320; i < 352; ++i) x[i] = -0.03f - std::fabs(x[i]); // an all-negative block
  ggml_cpu_init();
  const ggml_type types[] = {GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0,
                             GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K,
                             GGML_TYPE_IQ4_NL, GGML_TYPE_IQ4_XS};
  std::printf("{\n  \"n\": %d,\n  \"input\": [", n);
  for (int i = 0; i < n; ++i) std::printf("%s%.9g", i ? ", " : "", x[i]);
  std::printf("],\n  \"types\": [\n");
  bool first = true;
  for (ggml_type t : types) {
    const size_t bytes = ggml_row_size(t, n);
    std::vector<uint8_t> q(bytes);
    ggml_quantize_chunk(t, x.data(), q.data(), 0, 1, n, nullptr);
    std::vector<float> y(n);
    ggml_get_type_traits(t)->to_float(q.data(), y.data(), n);
    std::printf("%s    {\"type\": \"%s\", \"blocks\": \"", first ? "" : ",\n", ggml_type_name(t));
    for (uint8_t b : q) std::printf("%02x", b);
    std::printf("\",\n     \"decoded\": [");
    for (int i = 0; i < n; ++i) std::printf("%s%.9g", i ? ", " : "", y[i]);
    std::printf("]}");
    first = false;
  }
  std::printf("\n  ]\n}\n");
  return 0;
}
