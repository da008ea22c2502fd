// UniLoRA's index assignment as numpy computes it: SeedSequence(seed) -> PCG64 (XSL-RR 128/64) -> Generator.choice
// (no replacement: Floyd's algorithm and a shuffle, or a partial tail shuffle for large populations) and
// Generator.shuffle. Every step reproduces numpy's draws bit for bit, so the indices equal Python's.

#include "tuners/unilora/index.h"

#include <algorithm>
#include <array>
#include <unordered_set>

namespace peft::detail::unilora {
namespace {

/// 128-bit unsigned arithmetic modulo 2^128 (no compiler extension).
struct U128 {
  uint64_t hi = 0, lo = 0;
};

U128 add(U128 a, U128 b) {
  U128 r{a.hi + b.hi, a.lo + b.lo};
  if (r.lo < a.lo) ++r.hi;
  return r;
}

/// The full 128-bit product of two 64-bit numbers.
U128 mul64(uint64_t a, uint64_t b) {
  const uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32, b_lo = b & 0xffffffffu, b_hi = b >> 32;
  const uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi, hl = a_hi * b_lo, hh = a_hi * b_hi;
  const uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
  return U128{hh + (lh >> 32) + (hl >> 32) + (mid >> 32), (mid << 32) | (ll & 0xffffffffu)};
}

U128 mul(U128 a, U128 b) {
  U128 r = mul64(a.lo, b.lo);
  r.hi += a.hi * b.lo + a.lo * b.hi;
  return r;
}

/// numpy's SeedSequence(seed).generate_state(4, uint64) (no spawn key, pool size 4).
std::array<uint64_t, 4> seed_sequence(uint64_t seed) {
  constexpr uint32_t kInitA = 0x43b0d7e5u, kMultA = 0x931e8875u, kInitB = 0x8b51f9ddu, kMultB = 0x58f38dedu;
  constexpr uint32_t kMixL = 0xca01f9ddu, kMixR = 0x4973f715u;
  std::vector<uint32_t> entropy;  // the seed's 32-bit words, least significant first (at least one)
  do {
    entropy.push_back(static_cast<uint32_t>(seed & 0xffffffffu));
    seed >>= 32;
  } while (seed != 0);
  uint32_t hash = kInitA;
  auto hashmix = [&hash](uint32_t value) {
    value ^= hash;
    hash *= kMultA;
    value *= hash;
    return value ^ (value >> 16);
  };
  auto mix = [](uint32_t x, uint32_t y) {
    uint32_t result = kMixL * x - kMixR * y;
    return result ^ (result >> 16);
  };
  std::array<uint32_t, 4> pool{};
  for (size_t i = 0; i < pool.size(); ++i) pool[i] = hashmix(i < entropy.size() ? entropy[i] : 0);
  for (size_t src = 0; src < pool.size(); ++src) {
    for (size_t dst = 0; dst < pool.size(); ++dst) {
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
    }
  }
  for (size_t src = pool.size(); src < entropy.size(); ++src) {
    for (size_t dst = 0; dst < pool.size(); ++dst) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  }
  std::array<uint32_t, 8> words{};
  uint32_t hash_b = kInitB;
  for (size_t i = 0; i < words.size(); ++i) {
    uint32_t value = pool[i % pool.size()] ^ hash_b;
    hash_b *= kMultB;
    value *= hash_b;
    words[i] = value ^ (value >> 16);
  }
  std::array<uint64_t, 4> out{};
  for (size_t i = 0; i < out.size(); ++i) out[i] = words[2 * i] | (uint64_t{words[2 * i + 1]} << 32);
  return out;
}

/// numpy's PCG64 bit generator with its buffered 32-bit draws.
class Pcg64 {
 public:
  explicit Pcg64(uint64_t seed) {
    const std::array<uint64_t, 4> words = seed_sequence(seed);
    const U128 initial{words[0], words[1]};
    const U128 sequence{words[2], words[3]};
    increment_ = U128{(sequence.hi << 1) | (sequence.lo >> 63), (sequence.lo << 1) | 1u};
    step();
    state_ = add(state_, initial);
    step();
  }

  uint64_t next64() {
    step();
    const uint64_t x = state_.hi ^ state_.lo;
    const unsigned rot = static_cast<unsigned>(state_.hi >> 58);
    return (x >> rot) | (x << ((64 - rot) & 63));
  }

  uint32_t next32() {
    if (has_high_) {
      has_high_ = false;
      return high_;
    }
    const uint64_t value = next64();
    has_high_ = true;
    high_ = static_cast<uint32_t>(value >> 32);
    return static_cast<uint32_t>(value & 0xffffffffu);
  }

  /// random_bounded_uint64(0, max) (Lemire's rejection), for max < 2^32 as UniLoRA's sizes are.
  uint64_t bounded(uint64_t max) {
    if (max == 0) return 0;
    if (max > 0xffffffffu) return bounded64(max);
    if (max == 0xffffffffu) return next32();
    const uint32_t range = static_cast<uint32_t>(max) + 1;
    uint64_t m = uint64_t{next32()} * range;
    uint32_t leftover = static_cast<uint32_t>(m & 0xffffffffu);
    if (leftover < range) {
      const uint32_t threshold = static_cast<uint32_t>((0xffffffffu - static_cast<uint32_t>(max)) % range);
      while (leftover < threshold) {
        m = uint64_t{next32()} * range;
        leftover = static_cast<uint32_t>(m & 0xffffffffu);
      }
    }
    return m >> 32;
  }

  /// random_interval(max): masked rejection sampling (Generator.shuffle).
  uint64_t interval(uint64_t max) {
    if (max == 0) return 0;
    uint64_t mask = max;
    for (unsigned shift : {1u, 2u, 4u, 8u, 16u, 32u}) mask |= mask >> shift;
    uint64_t value = 0;
    if (max <= 0xffffffffu) {
      while ((value = (next32() & mask)) > max) {
      }
    } else {
      while ((value = (next64() & mask)) > max) {
      }
    }
    return value;
  }

 private:
  void step() { state_ = add(mul(state_, kMultiplier), increment_); }

  /// Lemire's rejection on 64-bit draws (numpy's bounded_lemire_uint64), for ranges beyond 32 bits.
  uint64_t bounded64(uint64_t max) {
    if (max == ~uint64_t{0}) return next64();
    const uint64_t range = max + 1;
    U128 m = mul64(next64(), range);
    if (m.lo < range) {
      const uint64_t threshold = (~uint64_t{0} - max) % range;
      while (m.lo < threshold) m = mul64(next64(), range);
    }
    return m.hi;
  }

  static constexpr U128 kMultiplier{2549297995355413924ull, 4865540595714422341ull};
  U128 state_{};
  U128 increment_{};
  bool has_high_ = false;
  uint32_t high_ = 0;
};

/// Generator.choice(population, size, replace=False) (shuffle=True, no p).
std::vector<int64_t> choice_without_replacement(Pcg64& rng, int64_t population, int64_t size) {
  if (population > 10000 && size > population / 50) {
    // A partial Fisher-Yates of arange(population): its last `size` entries.
    std::vector<int64_t> all(static_cast<size_t>(population));
    for (int64_t i = 0; i < population; ++i) all[static_cast<size_t>(i)] = i;
    for (int64_t i = population - 1; i >= std::max<int64_t>(population - size, 1); --i) {
      const auto j = static_cast<int64_t>(rng.bounded(static_cast<uint64_t>(i)));
      std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(j)]);
    }
    return std::vector<int64_t>(all.end() - size, all.end());
  }
  // Floyd's algorithm, then a shuffle of the sample.
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(size));
  std::unordered_set<int64_t> seen;
  for (int64_t j = population - size; j < population; ++j) {
    const auto value = static_cast<int64_t>(rng.bounded(static_cast<uint64_t>(j)));
    const int64_t taken = seen.insert(value).second ? value : j;
    if (taken == j) seen.insert(j);
    out.push_back(taken);
  }
  for (int64_t i = size - 1; i >= 1; --i) {
    const auto j = static_cast<int64_t>(rng.bounded(static_cast<uint64_t>(i)));
    std::swap(out[static_cast<size_t>(i)], out[static_cast<size_t>(j)]);
  }
  return out;
}

}  // namespace

std::vector<int64_t> generate_index(int64_t count, int64_t length, uint64_t seed) {
  Pcg64 rng(seed);
  const int64_t repeats = count / length, remaining = count % length;
  std::vector<int64_t> data;
  data.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < length; ++i) data.insert(data.end(), static_cast<size_t>(repeats), i);
  if (remaining > 0) {
    const std::vector<int64_t> extras = choice_without_replacement(rng, length, remaining);
    data.insert(data.end(), extras.begin(), extras.end());
  }
  for (int64_t i = count - 1; i >= 1; --i) {
    const auto j = static_cast<int64_t>(rng.interval(static_cast<uint64_t>(i)));
    std::swap(data[static_cast<size_t>(i)], data[static_cast<size_t>(j)]);
  }
  return data;
}

}  // namespace peft::detail::unilora
