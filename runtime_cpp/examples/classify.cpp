// A minimal edge app: load an artifact, classify one input, print the top-5 scores.
//
//   classify ARTIFACT_DIR INPUT.npy [--threads N]
//
// Build it beside your app with the autoglm_runtime library (see runtime_cpp/README.md).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "autoglm/runtime.h"

int main(int argc, char** argv) {
  if (argc != 3 && !(argc == 5 && std::string(argv[3]) == "--threads")) {
    std::fprintf(stderr, "usage: %s ARTIFACT_DIR INPUT.npy [--threads N]\n", argv[0]);
    return 2;
  }
  try {
    autoglm::RuntimeOptions options;
    if (argc == 5) options.num_threads = std::atoi(argv[4]);
    autoglm::Runtime model(argv[1], options);  // verifies checksums and architecture
    autoglm::HostTensor input = autoglm::ReadNpy(argv[2]);
    std::vector<autoglm::HostTensor> outputs = model.Run({input});

    const autoglm::HostTensor& scores = outputs.at(0);
    if (scores.dtype != "float32") {
      std::fprintf(stderr, "expected float32 scores, got %s\n", scores.dtype.c_str());
      return 1;
    }
    const float* s = scores.as<float>();
    std::vector<int64_t> order(size_t(scores.num_elements()));
    std::iota(order.begin(), order.end(), 0);
    const size_t k = std::min<size_t>(5, order.size());
    std::partial_sort(order.begin(), order.begin() + long(k), order.end(),
                      [&](int64_t a, int64_t b) { return s[a] > s[b]; });
    std::printf("%s on %s, loaded in %.1f ms\n", model.target_name().c_str(), model.arch().c_str(),
                model.load_ms());
    for (size_t i = 0; i < k; ++i) std::printf("top%zu class %lld score %.6f\n", i + 1, (long long)order[i], s[order[i]]);
    return 0;
  } catch (const autoglm::Error& e) {
    std::fprintf(stderr, "classify: %s\n", e.what());
    return 1;
  }
}
