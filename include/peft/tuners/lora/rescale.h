#pragma once

// Python PEFT's helpers.rescale_adapter_scale context manager as a scope guard.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <peft/export.h>
#include <peft/module_ref.h>

namespace peft {

namespace detail {
class AdapterLayer;
}  // namespace detail

/// While alive, the scaling of every adapter of every LoRA layer of the model (the layers Python's
/// `isinstance(module, LoraLayer)` selects: LoRA, including a MultiheadAttention's out_proj, and AdaLoRA) is
/// multiplied by `multiplier`; the destructor (also during stack unwinding) puts the scalings back as they were.
/// For a multiplier in [0, 1] this is wise-ft. Python's checks: a model without LoRA layers is refused with
/// ConfigError "scaling is only supported for models with `LoraLayer`s" (nothing is changed); Python's TypeError for
/// a multiplier that is not a float or int is the C++ type (`double`; ints and bools convert, as Python accepts them).
/// Scalings changed inside the scope are overwritten on exit, as Python's restore does.
class PEFT_API RescaleAdapterScale {
 public:
  RescaleAdapterScale(ModuleRef model, double multiplier);
  ~RescaleAdapterScale();
  RescaleAdapterScale(const RescaleAdapterScale&) = delete;
  RescaleAdapterScale& operator=(const RescaleAdapterScale&) = delete;

  double multiplier() const noexcept { return multiplier_; }

 private:
  struct Saved {
    std::shared_ptr<detail::AdapterLayer> layer;  // kept alive even if the layer is detached meanwhile
    std::vector<std::pair<std::string, double>> scalings;
  };
  double multiplier_;
  std::vector<Saved> saved_;
};

}  // namespace peft
