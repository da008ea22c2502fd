#include "tuners/lily/sharing.h"

#include <map>
#include <optional>
#include <string>
#include <utility>

namespace peft::detail::lily {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The entry of target_modules a layer is grouped under. Python tests a plain `key.endswith(suffix)` (no dot
// boundary) and keeps the last match in the iteration order of its target_modules set, which depends on
// Python's string hashing when several entries match; its comment asks for the longest, which is what is
// taken here.
std::optional<std::string> group_entry(const TargetModules& targets, const std::string& module_name) {
  if (targets.is_regex()) return targets.pattern();
  if (!targets.is_names()) return std::nullopt;
  std::optional<std::string> best;
  for (const std::string& entry : targets.names()) {
    if (ends_with(module_name, entry) && (!best || entry.size() > best->size())) best = entry;
  }
  return best;
}

}  // namespace

std::vector<SharedWith> plan_sharing(const std::vector<LayerRequest>& layers, const TargetModules& targets,
                                     int64_t stride_A) {
  std::vector<SharedWith> out;
  std::map<std::pair<std::string, std::vector<int64_t>>, std::vector<size_t>> groups;
  for (size_t i = 0; i < layers.size(); ++i) {
    out.push_back({i, i});
    const std::optional<std::string> entry = group_entry(targets, layers[i].module_name);
    if (!entry) continue;
    std::vector<size_t>& group = groups[{*entry, layers[i].base.weight().sizes().vec()}];
    const size_t position = group.size();
    group.push_back(i);
    const auto stride = static_cast<size_t>(stride_A);
    out[i] = {group[position / stride * stride], group.front()};
  }
  return out;
}

}  // namespace peft::detail::lily
