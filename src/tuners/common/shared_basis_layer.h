#pragma once

// The layer of methods whose adapters pair per-layer trained tensors with frozen random bases that one adapter
// shares between all its layers (VeRA, RandLoRA): containers <first>, <second>, then the shared BufferDicts
// <prefix>_A and <prefix>_B (Method::shares), and Python's forward loop over the active adapters — the input is
// cast to the adapter's dtype (and kept so for the adapters after it), dropped out, and the adapter's output added.
// Also the plan of the shared bases: sized by the largest targeted layer, made once before any layer.

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "tuners/common/dict_adapter_layer.h"

namespace peft::detail {

struct SharedBasisRecord : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  double scaling = 1;
  double dropout = 0;
};

class SharedBasisLayer : public DictAdapterLayer {
 public:
  /// Container indices: the layer's two trained tensors, then the adapter's shared bases.
  enum Index : size_t { FIRST, SECOND, A, B };

  /// `restore_result_dtype`: the sum goes back to the base output's dtype before the input's (VeRA does both,
  /// RandLoRA only the latter).
  SharedBasisLayer(const LayerRequest& request, const Method& method, const std::string& prefix,
                   const std::string& first, const std::string& second, bool restore_result_dtype);

 protected:
  /// The dtype the adapter computes in (the input is cast to it).
  virtual c10::ScalarType compute_dtype(const std::string& adapter, const c10::Device& device) const = 0;
  /// The adapter's addition to the layer output for this (cast, dropped-out) input.
  virtual at::Tensor adapter_output(const SharedBasisRecord& record, const at::Tensor& input) const = 0;

  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) final;

 private:
  bool restore_result_dtype_;
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
