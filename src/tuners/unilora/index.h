#pragma once

#include <cstdint>
#include <vector>

namespace peft::detail::unilora {

/// Python's UniLoraModel.generate_index: `count` indices into theta_d (`length` entries), each index used
/// floor(count / length) or ceil(count / length) times, shuffled; the same values numpy's
/// default_rng(seed) gives there (SeedSequence, PCG64, Generator.choice without replacement, Generator.shuffle).
std::vector<int64_t> generate_index(int64_t count, int64_t length, uint64_t seed);

}  // namespace peft::detail::unilora
