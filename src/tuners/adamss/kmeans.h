#pragma once

// scikit-learn's KMeans(n_clusters, init="random", n_init=1, max_iter, random_state=seed).fit_predict(X) on
// float32 data, as AdaMSS's clustering_Z calls it (scikit-learn 1.2): the data centred, the initial centres the
// rows numpy's RandomState(seed).permutation(n)[:n_clusters] picks, then Lloyd iterations (squared distances
// ||c||^2 - 2 x.c, the first nearest centre on ties, empty clusters given the farthest points) until the labels
// repeat, the centres move less than 1e-4 times the mean feature variance, or max_iter; a last assignment step
// unless the labels repeated.

#include <cstdint>
#include <vector>

namespace peft::detail::adamss {

/// Labels in [0, n_clusters) of the `rows` x `cols` row-major float32 matrix `x`.
std::vector<int64_t> kmeans_labels(const std::vector<float>& x, int64_t rows, int64_t cols, int64_t n_clusters,
                                   int64_t max_iter, uint32_t seed);

/// numpy's RandomState(seed).permutation(n) (MT19937, Fisher-Yates with masked rejection sampling).
std::vector<int64_t> numpy_permutation(int64_t n, uint32_t seed);

}  // namespace peft::detail::adamss
