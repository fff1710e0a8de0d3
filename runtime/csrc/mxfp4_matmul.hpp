// MXFP4 weight x activation matmul for a few activation rows (speculative verify steps).
//
// OpenVINO's CPU plugin decompresses MXFP4 weights per activation row, so its step cost grows almost linearly
// with tokens per step. Here every block of 32 weights is decoded once into registers and multiplied with all
// activation rows, so a step over 8 tokens reads and decodes the weights once, like a step over 1.
#pragma once

#include <cstddef>
#include <cstdint>

namespace specqd {

constexpr std::size_t kBlock = 32;  // weights per e8m0 scale
constexpr std::size_t kTile = 4;    // outputs decoded together; pack() interleaves them block by block
constexpr std::size_t kSpanBlocks = 64; // blocks of the inner dimension per pass (activations stay in L1)
constexpr std::size_t kMaxRows = 8; // activation rows whose accumulators stay in registers during a pass

// How activations enter the dot products. The weights are exact in both modes (e2m1 x 2^e is exact in bf16).
enum class Activations : int {
    bf16 = 0,  // rounded to bf16, as OpenVINO does in bf16 inference precision; AVX512-BF16 dot products
    f32 = 1,   // kept in f32, f32 FMAs; for f32 inference precision
};

// Weights in pack()'s layout: for each span of kSpanBlocks blocks of the inner dimension, for each tile of kTile
// outputs, for each block of the span, kTile x 16 bytes of nibbles (weight k is the low nibble of byte k/2
// when k is even) and kTile e8m0 scales. outputs % kTile == 0.
struct PackedMxfp4 {
    const std::uint8_t* nibbles;
    const std::uint8_t* scales;
    std::size_t outputs;
};

// Reorders row-major MXFP4 weights (outputs x inner/2 nibble bytes, outputs x inner/32 scales) so that the
// kernel reads one contiguous stream per span.
void pack(const std::uint8_t* nibbles, const std::uint8_t* scales, std::size_t inner, std::size_t outputs,
          std::uint8_t* packed_nibbles, std::uint8_t* packed_scales);

// y[r, o] = sum_k x[r, k] * w[o, k] for r < rows, o < w.outputs; x is rows x inner, y is rows x w.outputs,
// both row-major f32. inner % kBlock == 0. Outputs are split across threads with OpenVINO's own TBB.
void mxfp4_matmul(const float* x, std::size_t rows, std::size_t inner, const PackedMxfp4& w, float* y,
                  Activations mode);

// The bf16 decoder adds the scale exponent to the e2m1 value's exponent bits, which is exact while the product
// stays a normal bf16 number: scales in [2, 252]. Weights with other scales stay on OpenVINO's path. (OpenVINO
// itself decompresses through f16, which rounds products below 2^-24: a few scales of real layers go there.)
bool scales_supported(const std::uint8_t* scales, std::size_t count);

// True when this CPU has the instructions the kernel is compiled for (AVX-512 F/BW/VL and AVX512-BF16).
bool cpu_supported();

}  // namespace specqd
