// Trainable tokens brought along by another method's adapter: Python PEFT's set_additional_trainable_modules for
// `trainable_token_indices`, with its rules for weight tying. Python learns that the lm_head is tied from the model
// config (tie_word_embeddings, _tied_weights_keys); a LibTorch model ties by sharing the tensor, so here a layer is
// tied to the input embedding when its weight is the embedding's weight.

#include "tuners/trainable_tokens/wrapper.h"

#include <algorithm>
#include <set>
#include <sstream>
#include <unordered_map>

#include <c10/util/Exception.h>

#include <peft/error.h>

#include "tuners/trainable_tokens/layer.h"

namespace peft::detail::trainable_tokens {
namespace {

using NamedModule = std::pair<std::string, torch::nn::Module*>;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_component_of(const std::string& name, const std::string& part) {
  std::istringstream in(name);
  std::string piece;
  while (std::getline(in, piece, '.')) {
    if (piece == part) return true;
  }
  return false;
}

std::string python_list(const std::vector<int64_t>& rows) {
  std::string out = "[";
  for (size_t i = 0; i < rows.size(); ++i) out += (i ? ", " : "") + std::to_string(rows[i]);
  return out + "]";
}

}  // namespace

std::vector<AuxiliaryChange> prepare_token_wrappers(const AuxiliaryRequest& request, const WrapperRequest& wrappers) {
  const Method& method = require_method("TRAINABLE_TOKENS");
  if (wrappers.modules_to_save) {
    for (const auto& [name, rows] : wrappers.layers) {
      const auto& saved = *wrappers.modules_to_save;
      if (std::find(saved.begin(), saved.end(), name) == saved.end()) continue;
      throw ConfigError("The embedding layer is already marked to be trained fully, either specify "
                        "`modules_to_save=[..., \"" + name + "\", ...]` or `trainable_tokens={'" + name +
                        "': x}` but not both.");
    }
  }

  // The layers each entry names (Python's `key.endswith(target_key)`), each layer once.
  std::vector<std::pair<const NamedModule*, const std::vector<int64_t>*>> wrapped;
  std::unordered_map<const torch::nn::Module*, std::string> entry_of;  // layer -> the entry that named it
  for (const auto& [name, rows] : wrappers.layers) {
    bool found = false;
    for (const NamedModule& m : request.modules) {
      if (!ends_with(m.first, name)) continue;
      found = true;
      if (entry_of.emplace(m.second, name).second) wrapped.emplace_back(&m, &rows);
    }
    if (!found) {
      throw ConfigError("trainable_token_indices: Target modules {'" + name + "'} not found in the base model. Please "
                        "check the target modules and try again.");
    }
  }

  // Tying: the layers sharing the input embedding's weight.
  const TiedGroup group = find_tied_group(request.modules);
  const bool weights_tied = !group.embedding.empty();
  bool mismatch = false;
  std::set<std::string> skipped;  // entries left to the tying below
  if (wrappers.layers.size() > 1 && weights_tied) {
    std::vector<std::string> tied_entries;
    for (const auto& [name, rows] : wrappers.layers) {
      if (ends_with(group.embedding, name)) {
        tied_entries.push_back(name);
        continue;
      }
      for (const std::string& tied : group.tied) {
        if (ends_with(tied, name) || is_component_of(tied, name)) {
          tied_entries.push_back(name);
          break;
        }
      }
    }
    if (tied_entries.size() >= 2) {
      const std::vector<int64_t>& first = wrappers.layers.at(tied_entries[0]);
      for (size_t i = 1; i < tied_entries.size(); ++i) mismatch |= wrappers.layers.at(tied_entries[i]) != first;
      if (mismatch && wrappers.ensure_weight_tying) {
        std::string conflicting;
        for (const std::string& name : tied_entries) {
          conflicting += (conflicting.empty() ? "" : ", ") + name + ": " + python_list(wrappers.layers.at(name));
        }
        throw ConfigError("Cannot ensure weight tying when different token indices are specified for tied layers. "
                          "Conflicting layers: " + conflicting + ". Please use the same indices for all tied layers or "
                          "set ensure_weight_tying=False.");
      }
      if (!mismatch) {
        for (const std::string& name : tied_entries) {
          if (std::find(group.tied.begin(), group.tied.end(), name) != group.tied.end()) {
            skipped.insert(name);
          }
        }
      }
    }
  }

  std::unordered_set<const torch::nn::Module*> targets;
  for (const LayerRequest& target : request.targets) targets.insert(target.base.module);
  std::vector<AuxiliaryChange> out;
  std::unordered_set<const torch::nn::Module*> done;
  std::optional<DeltaHome> embedding_home;
  auto prepare = [&](const NamedModule& m, const std::vector<int64_t>& rows, const std::optional<DeltaHome>& tied_to) {
    if (targets.count(m.second)) {
      throw UnsupportedLayerError("'" + m.first + "' is both a target of this adapter and listed in "
                                  "trainable_token_indices; peft-cpp keeps one adapter method per layer. Leave it out "
                                  "of one of them (trainable tokens train its rows, LoRA all of it).");
    }
    const std::optional<BaseLayer> layer = describe_layer(*m.second);
    if (!layer) {
      throw UnsupportedLayerError("trainable_token_indices: '" + m.first + "' (" + short_repr(*m.second) +
                                  ") is not an Embedding or Linear layer whose rows could be trained.");
    }
    AdapterLayer* existing = adapter_layer_of(*m.second);
    if (existing && existing->peft_type() != method.peft_type()) {
      throw UnsupportedLayerError("Cannot add trainable tokens to '" + m.first + "': it already carries " +
                                  existing->peft_type() + " adapters, and peft-cpp keeps one adapter method per layer.");
    }
    const LayerRequest layer_request{request.config, request.adapter_name, m.first, *layer, existing,
                                     request.low_cpu_mem_usage};
    const DeltaHome home = tied_to ? *tied_to : own_deltas(layer_request);
    TokenRows token_rows{rows, /*init_weights=*/true, /*wrapper=*/true};
    out.push_back({prepare_trainable_tokens(layer_request, method, token_rows, home), m.first, m.first + ".token_adapter",
                   m.second, layer->kind});
    done.insert(m.second);
    if (m.first == group.embedding && !tied_to) embedding_home = home;
  };
  for (const auto& [m, rows] : wrapped) {
    if (!skipped.count(entry_of.at(m->second))) prepare(*m, *rows, std::nullopt);
  }

  if (!weights_tied && wrappers.ensure_weight_tying) {
    TORCH_WARN("ensure_weight_tying=True but the model does not have tied weights (tie_word_embeddings=False). Weight "
               "tying will not be applied for trainable_token_indices.");
  }
  if (weights_tied && embedding_home && (wrappers.ensure_weight_tying || !mismatch)) {
    const auto it = std::find_if(wrapped.begin(), wrapped.end(),
                                 [&](const auto& w) { return w.first->first == group.embedding; });
    DeltaHome home = *embedding_home;
    home.tied = true;
    home.owner = group.embedding;
    for (const NamedModule& m : request.modules) {
      const bool is_tied = std::find(group.tied.begin(), group.tied.end(), m.first) != group.tied.end();
      if (is_tied && !done.count(m.second)) prepare(m, *it->second, home);
    }
  }
  return out;
}

}  // namespace peft::detail::trainable_tokens
