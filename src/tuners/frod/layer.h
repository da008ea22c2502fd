#pragma once

#include <string>

#include <peft/tuners/frod/config.h>

#include "core/method.h"

namespace peft::detail::frod {

/// Python's _category_from_key: the group of layers that share one basis, from the layer's dotted name
/// ("layers.3.q_proj" -> "q_proj", "attn.q_proj" -> "attn_q_proj", "attention.output.dense" -> "attention_output").
std::string category_of(const std::string& module_name);

/// Builds FRoD adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, FrodConfig& config);

}  // namespace peft::detail::frod
