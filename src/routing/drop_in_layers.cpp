// peft::Linear & co.: LibTorch's layers with a forward that reaches their adapters without interposition.

#include <peft/error.h>
#include <peft/layers.h>

#include "core/adapter_layer.h"
#include "routing/router.h"
#include "routing/routing_check.h"

namespace peft {

#define PEFT_DROP_IN(Name)                                                                                  \
  at::Tensor Name##Impl::forward(const at::Tensor& input) { return detail::route(*this, input); }           \
  std::shared_ptr<torch::nn::Module> Name##Impl::clone(const c10::optional<c10::Device>& device) const {    \
    detail::refuse_clone_of_adapted_layer(*this, "peft::" #Name);                                           \
    const std::shared_ptr<torch::nn::Module> plain = torch::nn::Name##Impl::clone(device);                 \
    return std::make_shared<Name##Impl>(dynamic_cast<const torch::nn::Name##Impl&>(*plain));                \
  }
PEFT_ROUTED_LAYERS(PEFT_DROP_IN)
#undef PEFT_DROP_IN

bool routes_torch_layers() { return detail::routing_reaches(detail::LayerKind::Linear); }

}  // namespace peft
