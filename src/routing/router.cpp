#include "routing/router.h"

#include <peft/layers.h>

#ifdef PEFT_INTERPOSE
#include <dlfcn.h>

#include <cstring>

#include <peft/error.h>
#endif

namespace peft::detail {

#ifdef PEFT_INTERPOSE

namespace {

// This library defines LibTorch's layer forwards itself (interpose.cpp), so the symbol LibTorch's
// implementation is reached by is looked up behind this library in the dynamic linker's search order.
bool inside_this_library(void* address) {
  Dl_info mine{}, theirs{};
  static const int anchor = 0;
  if (!dladdr(&anchor, &mine) || !dladdr(address, &theirs)) return false;
  return mine.dli_fbase == theirs.dli_fbase;
}

void* libtorch_symbol(const char* mangled_name, const char* readable_name) {
  void* next = dlsym(RTLD_NEXT, mangled_name);
  if (next && !inside_this_library(next)) return next;
  void* any = dlsym(RTLD_DEFAULT, mangled_name);
  if (any && !inside_this_library(any)) return any;
  throw RoutingError(std::string("peft-cpp cannot find LibTorch's ") + readable_name +
                     " in this process; LibTorch must be linked as a shared library (libtorch_cpu.so).");
}

// Itanium C++ ABI: a pointer to a non-virtual member function is {code address, this-adjustment 0}.
template <class Layer>
using ForwardMember = at::Tensor (Layer::*)(const at::Tensor&);

template <class Layer>
ForwardMember<Layer> member_at(void* address) {
  static_assert(sizeof(ForwardMember<Layer>) == 2 * sizeof(void*), "unexpected member pointer layout");
  struct {
    void* address;
    std::ptrdiff_t adjustment;
  } representation{address, 0};
  ForwardMember<Layer> member;
  std::memcpy(&member, &representation, sizeof(member));
  return member;
}

template <class Layer>
struct Symbol;
#define PEFT_LIBTORCH_FORWARD(Layer, mangled)         \
  template <>                                         \
  struct Symbol<torch::nn::Layer> {                   \
    static constexpr const char* name = mangled;      \
    static constexpr const char* readable = "torch::nn::" #Layer "::forward"; \
  };
PEFT_LIBTORCH_FORWARD(LinearImpl, "_ZN5torch2nn10LinearImpl7forwardERKN2at6TensorE")
PEFT_LIBTORCH_FORWARD(EmbeddingImpl, "_ZN5torch2nn13EmbeddingImpl7forwardERKN2at6TensorE")
PEFT_LIBTORCH_FORWARD(Conv1dImpl, "_ZN5torch2nn10Conv1dImpl7forwardERKN2at6TensorE")
PEFT_LIBTORCH_FORWARD(Conv2dImpl, "_ZN5torch2nn10Conv2dImpl7forwardERKN2at6TensorE")
PEFT_LIBTORCH_FORWARD(Conv3dImpl, "_ZN5torch2nn10Conv3dImpl7forwardERKN2at6TensorE")
PEFT_LIBTORCH_FORWARD(LayerNormImpl, "_ZN5torch2nn13LayerNormImpl7forwardERKN2at6TensorE")
#undef PEFT_LIBTORCH_FORWARD

}  // namespace

template <class Layer>
at::Tensor original_forward(Layer& layer, const at::Tensor& input) {
  static const ForwardMember<Layer> forward =
      member_at<Layer>(libtorch_symbol(Symbol<Layer>::name, Symbol<Layer>::readable));
  return (layer.*forward)(input);
}

bool interposition_built() { return true; }

#else

template <class Layer>
at::Tensor original_forward(Layer& layer, const at::Tensor& input) {
  return layer.Layer::forward(input);
}

bool interposition_built() { return false; }

#endif

template at::Tensor original_forward(torch::nn::LinearImpl&, const at::Tensor&);
template at::Tensor original_forward(torch::nn::EmbeddingImpl&, const at::Tensor&);
template at::Tensor original_forward(torch::nn::Conv1dImpl&, const at::Tensor&);
template at::Tensor original_forward(torch::nn::Conv2dImpl&, const at::Tensor&);
template at::Tensor original_forward(torch::nn::Conv3dImpl&, const at::Tensor&);
template at::Tensor original_forward(torch::nn::LayerNormImpl&, const at::Tensor&);

// The drop-in peft:: layers (include/peft/layers.h) route explicitly.
at::Tensor route_linear(torch::nn::LinearImpl& layer, const at::Tensor& input) { return route(layer, input); }
at::Tensor route_embedding(torch::nn::EmbeddingImpl& layer, const at::Tensor& input) { return route(layer, input); }
at::Tensor route_conv1d(torch::nn::Conv1dImpl& layer, const at::Tensor& input) { return route(layer, input); }
at::Tensor route_conv2d(torch::nn::Conv2dImpl& layer, const at::Tensor& input) { return route(layer, input); }
at::Tensor route_conv3d(torch::nn::Conv3dImpl& layer, const at::Tensor& input) { return route(layer, input); }
at::Tensor route_layer_norm(torch::nn::LayerNormImpl& layer, const at::Tensor& input) { return route(layer, input); }

}  // namespace peft::detail

namespace peft {

at::Tensor forward_through_adapters(torch::nn::Module& layer, const at::Tensor& input,
                                    c10::function_ref<at::Tensor(const at::Tensor&)> base_forward) {
  if (detail::TunerLayer* tuner = detail::find_tuner(layer)) return tuner->forward(layer, input, base_forward);
  return base_forward(input);
}

}  // namespace peft
