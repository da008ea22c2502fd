#pragma once

// The few LibTorch APIs that differ between 1.13 and 2.x, in one place.

#include <torch/version.h>

#if TORCH_VERSION_MAJOR >= 2
#include <variant>
#else
#include <c10/util/variant.h>
#endif

namespace peft::detail {

/// std::get_if on LibTorch's option variants (c10::variant before LibTorch 2, std::variant since).
template <class T, class Variant>
const T* variant_get_if(const Variant& v) {
#if TORCH_VERSION_MAJOR >= 2
  return std::get_if<T>(&v);
#else
  return c10::get_if<T>(&v);
#endif
}

}  // namespace peft::detail
