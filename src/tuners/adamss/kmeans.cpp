#include "tuners/adamss/kmeans.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace peft::detail::adamss {
namespace {

/// numpy's random_interval: a uniform value in [0, max] by masked rejection on 32-bit draws.
uint64_t random_interval(std::mt19937& engine, uint64_t max) {
  if (max == 0) return 0;
  uint64_t mask = max;
  mask |= mask >> 1;
  mask |= mask >> 2;
  mask |= mask >> 4;
  mask |= mask >> 8;
  mask |= mask >> 16;
  mask |= mask >> 32;
  uint64_t value;
  if (max <= 0xffffffffULL) {
    while ((value = (static_cast<uint64_t>(engine()) & mask)) > max) {
    }
  } else {
    auto next64 = [&] {
      const uint64_t hi = engine();
      const uint64_t lo = engine();
      return (hi << 32) | lo;
    };
    while ((value = (next64() & mask)) > max) {
    }
  }
  return value;
}

}  // namespace

std::vector<int64_t> numpy_permutation(int64_t n, uint32_t seed) {
  std::mt19937 engine(seed);  // numpy's RandomState(int) seeds MT19937 with init_genrand, as std::mt19937 does
  std::vector<int64_t> out(static_cast<size_t>(n));
  std::iota(out.begin(), out.end(), 0);
  for (int64_t i = n - 1; i >= 1; --i) {
    const auto j = static_cast<int64_t>(random_interval(engine, static_cast<uint64_t>(i)));
    std::swap(out[static_cast<size_t>(i)], out[static_cast<size_t>(j)]);
  }
  return out;
}

std::vector<int64_t> kmeans_labels(const std::vector<float>& x_in, int64_t rows, int64_t cols, int64_t n_clusters,
                                   int64_t max_iter, uint32_t seed) {
  const auto n = static_cast<size_t>(rows), d = static_cast<size_t>(cols), k = static_cast<size_t>(n_clusters);
  std::vector<float> x = x_in;
  auto at = [&](std::vector<float>& m, size_t i, size_t j) -> float& { return m[i * d + j]; };

  // The tolerance: tol (1e-4) times the mean over features of the variance (of the data before centring).
  double mean_variance = 0.0;
  std::vector<float> mean(d, 0.0f);
  for (size_t j = 0; j < d; ++j) {
    float sum = 0.0f;
    for (size_t i = 0; i < n; ++i) sum += at(x, i, j);
    mean[j] = sum / static_cast<float>(n);
    double var = 0.0;
    for (size_t i = 0; i < n; ++i) {
      const double diff = static_cast<double>(at(x, i, j)) - static_cast<double>(mean[j]);
      var += diff * diff;
    }
    mean_variance += var / static_cast<double>(n);
  }
  const double tol = d ? mean_variance / static_cast<double>(d) * 1e-4 : 0.0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < d; ++j) at(x, i, j) -= mean[j];
  }

  const std::vector<int64_t> seeds = numpy_permutation(rows, seed);
  std::vector<float> centers(k * d), centers_new(k * d);
  for (size_t c = 0; c < k; ++c) {
    for (size_t j = 0; j < d; ++j) at(centers, c, j) = at(x, static_cast<size_t>(seeds[c]), j);
  }

  std::vector<int64_t> labels(n, -1), labels_old(n, -1);
  std::vector<float> weight(k), shift(k);

  // One Lloyd step: labels from `old`; with `update`, the new centres into `fresh`.
  auto lloyd = [&](std::vector<float>& old, std::vector<float>& fresh, bool update) {
    std::vector<float> norms(k, 0.0f);
    for (size_t c = 0; c < k; ++c) {
      float s = 0.0f;
      for (size_t j = 0; j < d; ++j) s += at(old, c, j) * at(old, c, j);
      norms[c] = s;
    }
    if (update) {
      std::fill(fresh.begin(), fresh.end(), 0.0f);
      std::fill(weight.begin(), weight.end(), 0.0f);
    }
    for (size_t i = 0; i < n; ++i) {
      int64_t best = 0;
      float best_dist = 0.0f;
      for (size_t c = 0; c < k; ++c) {
        float dot = 0.0f;
        for (size_t j = 0; j < d; ++j) dot += at(x, i, j) * at(old, c, j);
        const float dist = norms[c] + -2.0f * dot;
        if (c == 0 || dist < best_dist) best_dist = dist, best = static_cast<int64_t>(c);
      }
      labels[i] = best;
      if (update) {
        weight[static_cast<size_t>(best)] += 1.0f;
        for (size_t j = 0; j < d; ++j) at(fresh, static_cast<size_t>(best), j) += at(x, i, j);
      }
    }
    if (!update) return;
    // Empty clusters take the points farthest from their centres.
    std::vector<size_t> empty;
    for (size_t c = 0; c < k; ++c) {
      if (weight[c] == 0.0f) empty.push_back(c);
    }
    if (!empty.empty()) {
      std::vector<float> dist(n, 0.0f);
      for (size_t i = 0; i < n; ++i) {
        float s = 0.0f;
        for (size_t j = 0; j < d; ++j) {
          const float diff = at(x, i, j) - at(old, static_cast<size_t>(labels[i]), j);
          s += diff * diff;
        }
        dist[i] = s;
      }
      std::vector<size_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return dist[a] > dist[b]; });
      for (size_t e = 0; e < empty.size() && e < n; ++e) {
        const size_t far = order[e];
        const auto from = static_cast<size_t>(labels[far]);
        for (size_t j = 0; j < d; ++j) {
          at(fresh, from, j) -= at(x, far, j);
          at(fresh, empty[e], j) = at(x, far, j);
        }
        weight[empty[e]] = 1.0f;
        weight[from] -= 1.0f;
      }
    }
    for (size_t c = 0; c < k; ++c) {
      if (weight[c] > 0.0f) {
        const float alpha = 1.0f / weight[c];
        for (size_t j = 0; j < d; ++j) at(fresh, c, j) *= alpha;
      }
    }
    for (size_t c = 0; c < k; ++c) {
      float s = 0.0f;
      for (size_t j = 0; j < d; ++j) {
        const float diff = at(fresh, c, j) - at(old, c, j);
        s += diff * diff;
      }
      shift[c] = std::sqrt(s);
    }
  };

  bool strict = false;
  for (int64_t it = 0; it < max_iter; ++it) {
    lloyd(centers, centers_new, true);
    std::swap(centers, centers_new);
    if (labels == labels_old) {
      strict = true;
      break;
    }
    float total = 0.0f;
    for (float s : shift) total += s * s;
    if (static_cast<double>(total) <= tol) break;
    labels_old = labels;
  }
  if (!strict) lloyd(centers, centers, false);
  return labels;
}

}  // namespace peft::detail::adamss
