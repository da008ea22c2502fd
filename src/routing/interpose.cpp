// libpeft_interpose: definitions of LibTorch's layer forwards that take precedence over LibTorch's own.
//
// A model written with torch::nn::Linear (or Embedding, Conv1d/2d/3d, LayerNorm) calls
// torch::nn::LinearImpl::forward through the dynamic linker, which binds the first definition in its
// search order. Loaded before LibTorch, this library provides that definition: it hands layers that carry
// adapters to them and passes every other call on to LibTorch's implementation, which it finds behind
// itself (dlsym RTLD_NEXT) and gives to libpeft when it is loaded. Injection checks that calls really
// arrive here (routing_check.cpp) and fails loudly if not.
//
// It also defines the reset() of the layer types whose reset LibTorch exports (Linear, Embedding,
// LayerNorm): LibTorch's clone() of a layer calls reset() on the copy, which is where a clone of a layer
// with adapters is refused with an error that says what to do (router.h, refuse_clone_of_adapted_layer).

#include <dlfcn.h>

#include <cstring>
#include <string>

#include <peft/error.h>

#include "routing/router.h"

namespace {

bool inside_this_library(void* address) {
  Dl_info mine{}, theirs{};
  static const int anchor = 0;
  if (!dladdr(&anchor, &mine) || !dladdr(address, &theirs)) return false;
  return mine.dli_fbase == theirs.dli_fbase;
}

// The Itanium C++ ABI's name of torch::nn::<type>::<member>, e.g. ("LinearImpl", "7forwardERKN2at6TensorE").
std::string mangled(const char* type, const char* member) {
  return "_ZN5torch2nn" + std::to_string(std::strlen(type)) + type + member;
}

void* libtorch_symbol(const std::string& name, const std::string& readable) {
  void* next = dlsym(RTLD_NEXT, name.c_str());
  if (next && !inside_this_library(next)) return next;
  void* any = dlsym(RTLD_DEFAULT, name.c_str());
  if (any && !inside_this_library(any)) return any;
  throw peft::RoutingError("peft-cpp cannot find LibTorch's " + readable +
                           " in this process; LibTorch must be linked as a shared library (libtorch_cpu.so).");
}

// Itanium C++ ABI: a pointer to member function is {code address, this-adjustment}; an even address is a
// plain (non-virtual) call to exactly that function.
template <class Member>
Member member_at(void* address) {
  static_assert(sizeof(Member) == 2 * sizeof(void*), "unexpected member pointer layout");
  struct {
    void* address;
    std::ptrdiff_t adjustment;
  } representation{address, 0};
  Member member;
  std::memcpy(&member, &representation, sizeof(member));
  return member;
}

template <class Layer>
struct LibTorch;
#define PEFT_LIBTORCH(Name)                                                                             \
  template <>                                                                                           \
  struct LibTorch<torch::nn::Name##Impl> {                                                              \
    static at::Tensor forward(torch::nn::Name##Impl& layer, const at::Tensor& x) {                      \
      using Forward = at::Tensor (torch::nn::Name##Impl::*)(const at::Tensor&);                         \
      static const Forward call = member_at<Forward>(libtorch_symbol(                                  \
          mangled(#Name "Impl", "7forwardERKN2at6TensorE"), "torch::nn::" #Name "Impl::forward"));     \
      return (layer.*call)(x);                                                                          \
    }                                                                                                   \
    static void reset(torch::nn::Name##Impl& layer) {                                                   \
      using Reset = void (torch::nn::Name##Impl::*)();                                                  \
      static const Reset call =                                                                         \
          member_at<Reset>(libtorch_symbol(mangled(#Name "Impl", "5resetEv"), "torch::nn::" #Name "Impl::reset")); \
      (layer.*call)();                                                                                  \
    }                                                                                                   \
  };
PEFT_ROUTED_LAYERS(PEFT_LIBTORCH)
#undef PEFT_LIBTORCH

template <>
struct LibTorch<torch::nn::MultiheadAttentionImpl> {
  static peft::detail::AttentionOutput forward(torch::nn::MultiheadAttentionImpl& layer,
                                               const peft::detail::AttentionCall& c) {
    using Forward = peft::detail::AttentionOutput (torch::nn::MultiheadAttentionImpl::*)(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, const at::Tensor&, bool);
    static const Forward call = member_at<Forward>(
        libtorch_symbol(mangled("MultiheadAttentionImpl", "7forwardERKN2at6TensorES5_S5_S5_bS5_b"),
                        "torch::nn::MultiheadAttentionImpl::forward"));
    return (layer.*call)(c.query, c.key, c.value, c.key_padding_mask, c.need_weights, c.attn_mask,
                         c.average_attn_weights);
  }
};

// Hands LibTorch's forwards to libpeft while this library is being loaded, before any call can arrive.
[[maybe_unused]] const bool installed = [] {
  peft::detail::OriginalForwards originals;
#define PEFT_ORIGINAL(Name) originals.Name = &LibTorch<torch::nn::Name##Impl>::forward;
  PEFT_ROUTED_LAYERS(PEFT_ORIGINAL)
#undef PEFT_ORIGINAL
  originals.MultiheadAttention = &LibTorch<torch::nn::MultiheadAttentionImpl>::forward;
  peft::detail::install_original_forwards(originals);
  return true;
}();

}  // namespace

namespace torch::nn {

#define PEFT_INTERPOSE_FORWARD(Name) \
  at::Tensor Name##Impl::forward(const at::Tensor& input) { return peft::detail::route(*this, input); }
PEFT_ROUTED_LAYERS(PEFT_INTERPOSE_FORWARD)
#undef PEFT_INTERPOSE_FORWARD

std::tuple<at::Tensor, at::Tensor> MultiheadAttentionImpl::forward(const at::Tensor& query, const at::Tensor& key,
                                                                   const at::Tensor& value,
                                                                   const at::Tensor& key_padding_mask,
                                                                   bool need_weights, const at::Tensor& attn_mask,
                                                                   bool average_attn_weights) {
  return peft::detail::route(*this, peft::detail::AttentionCall{query, key, value, key_padding_mask, need_weights,
                                                                attn_mask, average_attn_weights});
}

// Only these three resets are exported by LibTorch (ConvNdImpl's is inline in its header).
#define PEFT_INTERPOSE_RESET(Name)                                                          \
  void Name##Impl::reset() {                                                               \
    peft::detail::refuse_clone_of_adapted_layer(*this, weight, "torch::nn::" #Name);       \
    LibTorch<Name##Impl>::reset(*this);                                                    \
  }
PEFT_INTERPOSE_RESET(Linear)
PEFT_INTERPOSE_RESET(Embedding)
PEFT_INTERPOSE_RESET(LayerNorm)
#undef PEFT_INTERPOSE_RESET

}  // namespace torch::nn
