#include "mxfp4_matmul.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#define SPECQD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace specqd {
namespace {


constexpr int kMinScale = 2;    // e2m1 x 2^(s-127) stays a normal bf16 number, so the exponent-add decoder
constexpr int kMaxScale = 252;  // is exact, for s in [2, 252]

// Where a pass reads and writes: `blocks` blocks of a tile's stream, activation rows `x_stride` apart, outputs
// rows `y_stride` apart; the first span of the inner dimension stores, later ones add.
struct Span {
    std::size_t blocks, x_stride, y_stride;
    bool accumulate;
    void store(float* at, float value) const { *at = accumulate ? *at + value : value; }
};

// Nibble pairs as 16-bit word indices: word 2i = low nibble of byte i, word 2i+1 = its high nibble, which is
// also the pair order of the bf16 dot product (lane i multiplies words 2i and 2i+1).
SPECQD_AVX512 inline __m512i nibble_words(const std::uint8_t* bytes16) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes16)));
    const __m512i lo = _mm512_and_si512(b, _mm512_set1_epi32(0x0F));
    const __m512i hi = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0xF0)), 12);
    return _mm512_or_si512(lo, hi);
}

// e2m1 codes 0..15 as bf16 bits, twice (the word permute reads a 32-entry table).
SPECQD_AVX512 inline __m512i bf16_table() {
    return _mm512_set_epi16(
        short(0xC0C0), short(0xC080), short(0xC040), short(0xC000), short(0xBFC0), short(0xBF80), short(0xBF00),
        short(0x8000), 0x40C0, 0x4080, 0x4040, 0x4000, 0x3FC0, 0x3F80, 0x3F00, 0x0000, short(0xC0C0),
        short(0xC080), short(0xC040), short(0xC000), short(0xBFC0), short(0xBF80), short(0xBF00), short(0x8000),
        0x40C0, 0x4080, 0x4040, 0x4000, 0x3FC0, 0x3F80, 0x3F00, 0x0000);
}

// One block of 32 weights as bf16: the scale is applied by adding it to the exponent bits of the table's
// non-zero entries (codes 0 and 8 are +-0), exact for scales_supported() scales.
SPECQD_AVX512 inline __m512bh decode_bf16(const std::uint8_t* bytes16, std::uint8_t scale, __m512i table) {
    const __m512i shift = _mm512_set1_epi16(static_cast<short>((int(scale) - 127) * 128));
    const __m512i scaled = _mm512_mask_add_epi16(table, 0xFEFEFEFEu, table, shift);
    return (__m512bh)_mm512_permutexvar_epi16(nibble_words(bytes16), scaled);
}

// R activation rows (bf16) x outputs T0..T0+NT-1 of one tile. The tile's weights are one contiguous stream
// (see pack), each block is decoded once for all R rows, and each activation load feeds NT dot products.
// Decoded: `nibbles` points to the span already decoded by decode_span (many rows: decode once per span).
template <int R, int T0, int NT, bool Decoded>
SPECQD_AVX512 void tile_bf16(const std::uint16_t* x, const Span& span, const std::uint8_t* nibbles,
                             const std::uint8_t* scales, float* y) {
    const __m512i table = bf16_table();
    __m512 acc[NT][R];
    for (int t = 0; t < NT; ++t)
        for (int r = 0; r < R; ++r) acc[t][r] = _mm512_setzero_ps();
    for (std::size_t b = 0; b < span.blocks; ++b) {
        __m512bh w[NT];
        for (int t = 0; t < NT; ++t) {
            const std::size_t at = b * kTile + T0 + t;
            w[t] = Decoded ? (__m512bh)_mm512_load_si512(nibbles + at * 64) : decode_bf16(nibbles + at * 16, scales[at], table);
        }
        for (int r = 0; r < R; ++r) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + r * span.x_stride + b * kBlock);
            for (int t = 0; t < NT; ++t) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], w[t], xv);
        }
    }
    for (int t = 0; t < NT; ++t)
        for (int r = 0; r < R; ++r) span.store(y + r * span.y_stride + T0 + t, _mm512_reduce_add_ps(acc[t][r]));
}

// A tile's span decoded to bf16 (kTile x 64 bytes per block), for passes of many rows over it.
SPECQD_AVX512 void decode_span(const std::uint8_t* nibbles, const std::uint8_t* scales, std::size_t blocks,
                               __m512i* out) {
    const __m512i table = bf16_table();
    for (std::size_t at = 0; at < blocks * kTile; ++at) out[at] = (__m512i)decode_bf16(nibbles + at * 16, scales[at], table);
}

// The same with f32 activations and f32 FMAs: two vectors of 16 decoded weights per block.
template <int R, int T0, int NT>
SPECQD_AVX512 void tile_f32(const float* x, const Span& span, const std::uint8_t* nibbles,
                            const std::uint8_t* scales, float* y) {
    const __m512 table = _mm512_setr_ps(0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                                        -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f);
    __m512 acc[NT][R];
    for (int t = 0; t < NT; ++t)
        for (int r = 0; r < R; ++r) acc[t][r] = _mm512_setzero_ps();
    for (std::size_t b = 0; b < span.blocks; ++b) {
        __m512 w[NT][2];
        for (int t = 0; t < NT; ++t) {
            const std::size_t at = b * kTile + T0 + t;
            const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(nibbles + at * 16));
            const __m128i lo = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
            const __m512 scale = _mm512_set1_ps(std::ldexp(1.0f, int(scales[at]) - 127));
            w[t][0] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)), table), scale);
            w[t][1] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi)), table), scale);
        }
        for (int r = 0; r < R; ++r) {
            const __m512 x0 = _mm512_loadu_ps(x + r * span.x_stride + b * kBlock);
            const __m512 x1 = _mm512_loadu_ps(x + r * span.x_stride + b * kBlock + 16);
            for (int t = 0; t < NT; ++t) acc[t][r] = _mm512_fmadd_ps(w[t][1], x1, _mm512_fmadd_ps(w[t][0], x0, acc[t][r]));
        }
    }
    for (int t = 0; t < NT; ++t)
        for (int r = 0; r < R; ++r) span.store(y + r * span.y_stride + T0 + t, _mm512_reduce_add_ps(acc[t][r]));
}

// One tile for R rows: up to 4 rows take the whole tile in one pass (4 x R accumulators); 5 to 8 rows take it
// in two passes of 2 outputs (2 x R accumulators), so every weight is still decoded once for all R rows.
template <template <int, int, int> class Tile, int R, typename T>
void tile_rows(const T* x, const Span& span, const std::uint8_t* nibbles, const std::uint8_t* scales, float* y) {
    if constexpr (R <= 4) {
        Tile<R, 0, kTile>::run(x, span, nibbles, scales, y);
    } else {
        Tile<R, 0, 2>::run(x, span, nibbles, scales, y);
        Tile<R, 2, 2>::run(x, span, nibbles, scales, y);
    }
}
template <int R, int T0, int NT> struct Bf16Tile { static constexpr auto run = tile_bf16<R, T0, NT, false>; };
template <int R, int T0, int NT> struct DecodedBf16Tile { static constexpr auto run = tile_bf16<R, T0, NT, true>; };
template <int R, int T0, int NT> struct F32Tile { static constexpr auto run = tile_f32<R, T0, NT>; };

template <typename T>
using TileFn = void (*)(const T*, const Span&, const std::uint8_t*, const std::uint8_t*, float*);

// Outputs o_begin..o_end for all rows. The inner dimension is walked in spans of kSpanBlocks blocks so that
// the activations of a span (kMaxRows x 2 KB in bf16) stay in L1 while the weights stream past; rows go
// kMaxRows at a time. With Predecode (bf16, more than 2 x kMaxRows rows: a prompt) each tile's span is decoded
// once into a 16 KB buffer that every chunk of rows reads.
template <typename T, template <int, int, int> class Tile, bool Predecode = false>
void tiles(const T* x, std::size_t rows, std::size_t inner, const PackedMxfp4& w, std::size_t o_begin,
           std::size_t o_end, float* y) {
    alignas(64) __m512i decoded[Predecode ? kSpanBlocks * kTile : 1];
    const TileFn<T> by_rows[kMaxRows] = {tile_rows<Tile, 1, T>, tile_rows<Tile, 2, T>, tile_rows<Tile, 3, T>,
                                         tile_rows<Tile, 4, T>, tile_rows<Tile, 5, T>, tile_rows<Tile, 6, T>,
                                         tile_rows<Tile, 7, T>, tile_rows<Tile, 8, T>};
    const std::size_t blocks = inner / kBlock;
    for (std::size_t b0 = 0; b0 < blocks; b0 += kSpanBlocks) {
        const Span span{std::min(kSpanBlocks, blocks - b0), inner, w.outputs, b0 > 0};
        for (std::size_t o = o_begin; o < o_end; o += kTile) {
            const std::uint8_t* nibbles = w.nibbles + (b0 * w.outputs + o * span.blocks) * 16;
            const std::uint8_t* scales = w.scales + b0 * w.outputs + o * span.blocks;
            if constexpr (Predecode) {
                decode_span(nibbles, scales, span.blocks, decoded);
                nibbles = reinterpret_cast<const std::uint8_t*>(decoded);
            }
            for (std::size_t r = 0; r < rows; r += kMaxRows) {
                const std::size_t chunk = std::min<std::size_t>(kMaxRows, rows - r);
                by_rows[chunk - 1](x + r * inner + b0 * kBlock, span, nibbles, scales, y + r * w.outputs + o);
            }
        }
    }
}

SPECQD_AVX512 void to_bf16(const float* x, std::size_t count, std::uint16_t* out) {
    std::size_t i = 0;
    for (; i + 16 <= count; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
    for (; i < count; ++i) {  // round to nearest even, like the vector instruction
        std::uint32_t bits;
        std::memcpy(&bits, x + i, 4);
        out[i] = static_cast<std::uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }
}

}  // namespace

void pack(const std::uint8_t* nibbles, const std::uint8_t* scales, std::size_t inner, std::size_t outputs,
          std::uint8_t* packed_nibbles, std::uint8_t* packed_scales) {
    const std::size_t blocks = inner / kBlock;
    for (std::size_t o = 0; o < outputs; ++o) {
        for (std::size_t b = 0; b < blocks; ++b) {
            const std::size_t b0 = b - b % kSpanBlocks, span = std::min(kSpanBlocks, blocks - b0);
            const std::size_t at = b0 * outputs + (o - o % kTile) * span + (b - b0) * kTile + o % kTile;
            std::memcpy(packed_nibbles + at * 16, nibbles + o * (inner / 2) + b * 16, 16);
            packed_scales[at] = scales[o * blocks + b];
        }
    }
}

void mxfp4_matmul(const float* x, std::size_t rows, std::size_t inner, const PackedMxfp4& w, float* y,
                  Activations mode) {
    // The calling thread's bf16 copy of x, reused across calls (a decode step makes ~200). Workers get a
    // pointer to it: inside the lambda the name would mean each worker's own thread_local.
    thread_local std::vector<std::uint16_t> x_bf16;
    if (mode == Activations::bf16) {
        x_bf16.resize(rows * inner);
        to_bf16(x, x_bf16.size(), x_bf16.data());
    }
    const std::uint16_t* xb = x_bf16.data();
    // Grains of 16 tiles: enough to balance two to a few dozen threads on the smallest layer (256 outputs).
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, w.outputs / kTile, 16), [&](const tbb::blocked_range<std::size_t>& r) {
        const std::size_t begin = r.begin() * kTile, end = r.end() * kTile;
        if (mode == Activations::f32)
            tiles<float, F32Tile>(x, rows, inner, w, begin, end, y);
        else if (rows > 2 * kMaxRows)
            tiles<std::uint16_t, DecodedBf16Tile, true>(xb, rows, inner, w, begin, end, y);
        else
            tiles<std::uint16_t, Bf16Tile>(xb, rows, inner, w, begin, end, y);
    });
}

bool scales_supported(const std::uint8_t* scales, std::size_t count) {
    return std::all_of(scales, scales + count, [](std::uint8_t s) { return s >= kMinScale && s <= kMaxScale; });
}

bool cpu_supported() {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

}  // namespace specqd

extern "C" {
// Plain C entry points for ctypes: tests and the kernel microbenchmark.
int specqd_mxfp4_cpu_supported() { return specqd::cpu_supported() ? 1 : 0; }
int specqd_mxfp4_scales_supported(const std::uint8_t* scales, std::size_t count) {
    return specqd::scales_supported(scales, count) ? 1 : 0;
}
void specqd_mxfp4_pack(const std::uint8_t* nibbles, const std::uint8_t* scales, std::size_t inner,
                       std::size_t outputs, std::uint8_t* packed_nibbles, std::uint8_t* packed_scales) {
    specqd::pack(nibbles, scales, inner, outputs, packed_nibbles, packed_scales);
}
void specqd_mxfp4_matmul(const float* x, std::size_t rows, std::size_t inner, const std::uint8_t* packed_nibbles,
                         const std::uint8_t* packed_scales, std::size_t outputs, float* y, int f32_activations) {
    specqd::mxfp4_matmul(x, rows, inner, specqd::PackedMxfp4{packed_nibbles, packed_scales, outputs}, y,
                         f32_activations ? specqd::Activations::f32 : specqd::Activations::bf16);
}
}
