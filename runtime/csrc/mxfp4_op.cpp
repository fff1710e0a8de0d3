// The kernel as OpenVINO operations, loaded with Core.add_extension(). The runtime rewrites an MXFP4 IR so
// that each MatMul over NNCF's MXFP4 decompression subgraph becomes MXFP4MatMul(x, nibbles, scales), and the
// embedding's Gather over it MXFP4Gather(indices, nibbles, scales), where nibbles and scales are u8 views of the
// same bytes in the .bin (see runtime/mxfp4_kernel.py).
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/op/op.hpp>

#include "mxfp4_matmul.hpp"

namespace specqd {

class Mxfp4MatMul : public ov::op::Op {
public:
    OPENVINO_OP("MXFP4MatMul", "specqd");

    Mxfp4MatMul() = default;
    Mxfp4MatMul(const ov::Output<ov::Node>& x, const ov::Output<ov::Node>& nibbles, const ov::Output<ov::Node>& scales,
                std::string activations)
        : Op({x, nibbles, scales}), m_activations(std::move(activations)) {
        constructor_validate_and_infer_types();
    }

    // x [..., inner] f32, nibbles [outputs, inner / 2] u8, scales [outputs, inner / 32] u8 -> [..., outputs] f32.
    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, m_activations == "bf16" || m_activations == "f32",
                              "activations must be bf16 or f32, got ", m_activations);
        const auto& scales = get_input_partial_shape(2);
        NODE_VALIDATION_CHECK(this, scales.rank().is_static() && scales.rank().get_length() == 2 && scales.is_static(),
                              "scales must be a static [outputs, inner / 32] u8 tensor");
        auto shape = get_input_partial_shape(0);
        if (shape.rank().is_static()) shape[shape.size() - 1] = scales[0];
        set_output_type(0, ov::element::f32, shape);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        check_new_args_count(this, args);
        return std::make_shared<Mxfp4MatMul>(args[0], args[1], args[2], m_activations);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("activations", m_activations);
        return true;
    }

    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const ov::Tensor& x = inputs[0];
        const ov::Shape scale_shape = inputs[2].get_shape();
        const std::size_t out_features = scale_shape[0], inner = scale_shape[1] * kBlock;
        const PackedMxfp4 weights = packed(inputs[1], inputs[2], inner, out_features);
        ov::Shape y_shape = x.get_shape();
        y_shape.back() = out_features;
        outputs[0].set_shape(y_shape);
        mxfp4_matmul(x.data<const float>(), x.get_size() / inner, inner, weights, outputs[0].data<float>(),
                     m_activations == "f32" ? Activations::f32 : Activations::bf16);
        return true;
    }

private:
    // The weights are packed once, on the first call. The original bytes stay in the mmapped .bin, where
    // nothing touches them again, so the kernel adds one copy of the packed weights in memory.
    PackedMxfp4 packed(const ov::Tensor& nibbles, const ov::Tensor& scales, std::size_t inner,
                       std::size_t out_features) const {
        std::call_once(m_packed_once, [&] {
            m_nibbles.resize(nibbles.get_byte_size());
            m_scales.resize(scales.get_byte_size());
            pack(static_cast<const std::uint8_t*>(nibbles.data()), static_cast<const std::uint8_t*>(scales.data()),
                 inner, out_features, m_nibbles.data(), m_scales.data());
        });
        return PackedMxfp4{m_nibbles.data(), m_scales.data(), out_features};
    }

    std::string m_activations = "bf16";
    mutable std::once_flag m_packed_once;
    mutable std::vector<std::uint8_t> m_nibbles, m_scales;
};

// Rows of an MXFP4 table looked up by index and decoded as they are read, exactly (e2m1 x 2^(s-127) is an f32
// number for every scale). OpenVINO's CPU plugin has no Gather over MXFP4 weights: it folds the whole table's
// decompression when it compiles, which for the 1.5B's embedding (151936 x 1536) is 890 MB of f32 and most
// of the level's compile time. A step looks up a few rows, so decoding them costs nothing in comparison.
class Mxfp4Gather : public ov::op::Op {
public:
    OPENVINO_OP("MXFP4Gather", "specqd");

    Mxfp4Gather() = default;
    Mxfp4Gather(const ov::Output<ov::Node>& indices, const ov::Output<ov::Node>& nibbles,
                const ov::Output<ov::Node>& scales)
        : Op({indices, nibbles, scales}) {
        constructor_validate_and_infer_types();
    }

    // indices [...] i32 or i64, nibbles [rows, width / 2] u8, scales [rows, width / 32] u8 -> [..., width] f32.
    void validate_and_infer_types() override {
        const auto& scales = get_input_partial_shape(2);
        NODE_VALIDATION_CHECK(this, scales.rank().is_static() && scales.rank().get_length() == 2 && scales.is_static(),
                              "scales must be a static [rows, width / 32] u8 tensor");
        auto shape = get_input_partial_shape(0);
        if (shape.rank().is_static()) shape.push_back(scales[1] * kBlock);
        set_output_type(0, ov::element::f32, shape);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        check_new_args_count(this, args);
        return std::make_shared<Mxfp4Gather>(args[0], args[1], args[2]);
    }

    bool visit_attributes(ov::AttributeVisitor&) override { return true; }

    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const ov::Tensor& indices = inputs[0];
        const auto* nibbles = static_cast<const std::uint8_t*>(inputs[1].data());
        const auto* scales = static_cast<const std::uint8_t*>(inputs[2].data());
        const std::size_t rows = inputs[2].get_shape()[0], blocks = inputs[2].get_shape()[1];
        ov::Shape shape = indices.get_shape();
        shape.push_back(blocks * kBlock);
        outputs[0].set_shape(shape);
        float* out = outputs[0].data<float>();
        for (std::size_t i = 0; i < indices.get_size(); ++i) {
            const std::int64_t row = indices.get_element_type() == ov::element::i64
                                         ? indices.data<const std::int64_t>()[i]
                                         : indices.data<const std::int32_t>()[i];
            OPENVINO_ASSERT(row >= 0 && static_cast<std::size_t>(row) < rows, "MXFP4Gather: index ", row,
                            " is outside the table's ", rows, " rows");
            decode_row(nibbles + row * blocks * kBlock / 2, scales + row * blocks, blocks, out + i * blocks * kBlock);
        }
        return true;
    }

private:
    static void decode_row(const std::uint8_t* nibbles, const std::uint8_t* scales, std::size_t blocks, float* out) {
        static constexpr float kE2m1[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.f, -.5f, -1, -1.5f, -2, -3, -4, -6};
        for (std::size_t b = 0; b < blocks; ++b) {
            const float scale = scales[b] == 255 ? std::numeric_limits<float>::quiet_NaN()  // e8m0's NaN
                                                 : std::ldexp(1.0f, static_cast<int>(scales[b]) - 127);
            for (std::size_t k = 0; k < kBlock / 2; ++k) {  // weight 2k is the low nibble of byte k
                out[b * kBlock + 2 * k] = kE2m1[nibbles[b * kBlock / 2 + k] & 15] * scale;
                out[b * kBlock + 2 * k + 1] = kE2m1[nibbles[b * kBlock / 2 + k] >> 4] * scale;
            }
        }
    }
};

}  // namespace specqd

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({std::make_shared<ov::OpExtension<specqd::Mxfp4MatMul>>(),
                                                            std::make_shared<ov::OpExtension<specqd::Mxfp4Gather>>()}));
