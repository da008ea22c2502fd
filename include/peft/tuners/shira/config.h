#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/module.h>

#include <peft/config.h>

namespace peft {

/// A SHiRA mask function: given the targeted layer and `r`, a mask of the layer's weight shape
/// (out_features, in_features) holding exactly r * (in_features + out_features) ones (1 or true) and zeros
/// elsewhere. Python PEFT's `config.mask_fn = my_mask_fn`.
using ShiraMaskFn = std::function<at::Tensor(const torch::nn::Module& base_layer, int64_t r)>;

/// SHiRA (Sparse High Rank Adapters): a sparse, high-rank update. Each targeted layer trains
/// r * (in + out) entries of its weight (as many parameters as a rank-r LoRA) at positions fixed by a mask;
/// the positions are saved with the adapter (`shira_indices`, int32). Targets Linear layers.
class PEFT_API ShiraConfig : public MethodConfig<ShiraConfig> {
 public:
  std::string peft_type() const override { return "SHIRA"; }

  /// Sets the number of trained entries, r * (in + out); it does not limit the update's rank.
  TORCH_ARG(int64_t, r) = 32;
  /// "random": the mask of shira_random_mask(layer, r, random_seed). Any other value needs `mask_fn`, or the
  /// adapter's `shira_indices` loaded from a checkpoint (as when loading a Python adapter made with a custom
  /// mask); until then its forward and merge refuse to run.
  TORCH_ARG(std::string, mask_type) = "random";
  /// Seed of the random mask's generator; unset: the generator's default seed, as in Python.
  TORCH_ARG(std::optional<int64_t>, random_seed) = std::nullopt;
  /// Python PEFT's flag for weights stored (in, out); SHiRA adapts torch::nn::Linear only, so it is turned
  /// off (with Python's warning).
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// true: the trained entries start at zero (a no-op); false: standard normal (for tests).
  TORCH_ARG(bool, init_weights) = true;
  /// A mask function of your own (not saved in adapter_config.json, like Python's `mask_fn`); when set it is
  /// used whatever `mask_type` says. Give a `mask_type` other than "random" to record that in the file.
  TORCH_ARG(ShiraMaskFn, mask_fn);
};

/// Python PEFT's `random_mask`: r * (in + out) positions of `base_layer`'s (out, in) weight drawn with
/// torch.randperm from a CPU generator seeded with `random_seed` (its default seed when unset). Returns a
/// bool mask on the weight's device (the CPU for a layer on the meta device). Throws peft::UnsupportedLayerError for a layer that is not a Linear.
PEFT_API at::Tensor shira_random_mask(const torch::nn::Module& base_layer, int64_t r,
                                      std::optional<int64_t> random_seed = std::nullopt);

}  // namespace peft
