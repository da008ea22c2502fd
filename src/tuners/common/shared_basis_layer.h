#pragma once

// The layer of methods whose adapters pair per-layer trained tensors with frozen random bases that one adapter
// shares between all its layers (VeRA, RandLoRA): containers <first>, <second>, then the shared BufferDicts
// <prefix>_A and <prefix>_B (Method::shares); the forward is CastInputLayer's. Also the plan of the shared bases: sized by the largest targeted layer, made once before any layer.

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "tuners/common/cast_input_layer.h"

namespace peft::detail {

struct SharedBasisRecord : CastInputRecord {
  using CastInputRecord::CastInputRecord;
  double scaling = 1;
};

class SharedBasisLayer : public CastInputLayer {
 public:
  /// Container indices: the layer's two trained tensors, then the adapter's shared bases.
  enum Index : size_t { FIRST, SECOND, A, B };

  SharedBasisLayer(const LayerRequest& request, const Method& method, const std::string& prefix,
                   const std::string& first, const std::string& second, bool restore_result_dtype);
};

/// The shared bases' sizes and tensor options for one injection of an adapter.
struct SharedBasisPlan {
  int64_t in_features = 0, out_features = 0;  // the largest among the targeted layers
  at::TensorOptions options;
  /// False: the bases are placeholders (on the meta device) that loading the checkpoint fills.
  bool materialise = true;
};

/// `save_projection`: whether checkpoints hold the bases (then low_cpu_mem_usage leaves them to the checkpoint).
SharedBasisPlan plan_shared_bases(const std::vector<LayerRequest>& requests, bool save_projection);

}  // namespace peft::detail
