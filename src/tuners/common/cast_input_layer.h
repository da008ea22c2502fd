#pragma once

// The layer of methods whose Python forward loops over the active adapters casting the input to each adapter's
// dtype (and keeping it so for the adapters after it), dropping it out, and adding the adapter's output to the base
// output: VeRA, RandLoRA (through SharedBasisLayer), VB-LoRA, UniLoRA. A method supplies the dtype and the output.

#include <ATen/core/Tensor.h>

#include "tuners/common/dict_adapter_layer.h"

namespace peft::detail {

struct CastInputRecord : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  double dropout = 0;
};

class CastInputLayer : public DictAdapterLayer {
 public:
  /// `restore_result_dtype`: the sum goes back to the base output's dtype before the input's (VeRA does both, the
  /// others only the latter).
  CastInputLayer(const LayerRequest& request, const Method& method, std::vector<Container> containers,
                 bool restore_result_dtype = false)
      : DictAdapterLayer(request, method, std::move(containers)), restore_result_dtype_(restore_result_dtype) {}

 protected:
  /// The dtype the adapter computes in (the input is cast to it).
  virtual c10::ScalarType compute_dtype(const std::string& adapter, const c10::Device& device) const = 0;
  /// The adapter's addition to the layer output for this (cast, dropped-out) input.
  virtual at::Tensor adapter_output(const CastInputRecord& record, const at::Tensor& input, bool training) const = 0;

  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) final;

 private:
  bool restore_result_dtype_;
};

}  // namespace peft::detail
