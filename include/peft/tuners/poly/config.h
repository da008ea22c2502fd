#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// Poly (Polytropon, https://arxiv.org/abs/2202.13914) and Multi-Head Routing (MHR, https://arxiv.org/abs/2211.03831):
/// each adapted layer holds n_skills LoRA pairs, split into n_splits heads; a router with one row of logits per
/// task mixes the skills of each head for each sample's task. y = W x + (x A_t) B_t / r per sample, with A_t, B_t
/// the mixtures for the sample's task t. Every forward needs the per-sample task ids: hold a peft::TaskIds guard
/// (<peft/tuners/poly/task_ids.h>) around it. Targets Linear layers; inputs are (batch, sequence, features), as in Python.
class PEFT_API PolyConfig : public MethodConfig<PolyConfig> {
 public:
  std::string peft_type() const override { return "POLY"; }

  /// The rank of each skill's LoRA pair.
  TORCH_ARG(int64_t, r) = 8;
  /// true: B starts at zero (a no-op start); false: B is drawn like A (kaiming-uniform, as nn.Linear's default).
  TORCH_ARG(bool, init_weights) = true;
  /// The router: only "poly".
  TORCH_ARG(std::string, poly_type) = "poly";
  /// The number of tasks (rows of the router's logits); task ids must be below it.
  TORCH_ARG(int64_t, n_tasks) = 1;
  /// The number of skills (LoRA pairs) in each layer.
  TORCH_ARG(int64_t, n_skills) = 4;
  /// The number of heads each LoRA pair is split into (> 1: Multi-Head Routing); must divide the layer's in and
  /// out features.
  TORCH_ARG(int64_t, n_splits) = 1;
};

}  // namespace peft
