#pragma once

// Per-sample adapter names (AdapterNamesPerSample): the rows of a batch grouped by adapter once, for the
// adapted layers of one model, visible to the forwards of the thread that created the guard.

#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include <peft/lifecycle.h>

namespace peft::detail {
class AdapterLayer;
}  // namespace peft::detail

namespace peft {

struct AdapterNamesPerSample::Routing {
  std::vector<std::string> names;                          // one per row
  std::vector<std::pair<std::string, at::Tensor>> groups;  // adapter -> row indices (int64, CPU), first-seen order
  std::unordered_set<const detail::AdapterLayer*> layers;    // the layers of the guarded model

};

}  // namespace peft

namespace peft::detail {

/// The calling thread's innermost AdapterNamesPerSample, or nullptr.
const AdapterNamesPerSample::Routing* current_sample_routing();
void set_current_sample_routing(const AdapterNamesPerSample::Routing* routing);

/// Python PEFT's _check_forward_args for adapter_names: one name per row of `x`, and no merged adapter
/// (`merged`) on the layer; ConfigError with Python's texts otherwise.
void check_sample_routing(const at::Tensor& x, const AdapterNamesPerSample::Routing& routing, bool merged);

}  // namespace peft::detail
