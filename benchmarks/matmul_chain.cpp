// The chain of Janus-Pro-1B's 168 int4 matmuls (24 layers: q, k, v, o 2048x2048; gate, up 5632x2048;
// down 2048x5632) on janus_ov/matmul.cpp's kernel alone, random u4 weights and f16 scales: no graph,
// no plugin, so two versions of the kernel can be timed apart from everything else
// (benchmarks/matmul_chain.py builds one binary per version, including that version's matmul.cpp).
//
//   ./chain ROWS AMX_ROWS REPEATS [LAYERS]  -> the median and least ms of REPEATS chains, one line of JSON
//   ./chain ROWS AMX_ROWS check             -> the output of one matmul against the vector kernel's: equal?
#include MATMUL_SOURCE

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 4 && argc != 5) return 2;
    const int rows = std::atoi(argv[1]), amx = std::atoi(argv[2]);
    const bool check = std::strcmp(argv[3], "check") == 0;
    const int repeats = check ? 0 : std::atoi(argv[3]), layers = check ? 1 : argc == 5 ? std::atoi(argv[4]) : 24;
    std::mt19937 rng(0);
    std::vector<std::shared_ptr<janus::Weights>> chain;
    for (int layer = 0; layer < layers; ++layer)
        for (auto [N, K] : {std::pair{2048, 2048}, {2048, 2048}, {2048, 2048}, {2048, 2048}, {5632, 2048}, {5632, 2048}, {2048, 5632}}) {
            std::vector<uint8_t> u(size_t(N) * K / 2), zero(size_t(N) * K / 128 + 1);
            std::vector<uint16_t> scale(size_t(N) * K / 64);
            for (auto& b : u) b = rng();
            for (auto& b : zero) b = rng();
            for (auto& s : scale) s = 0x2000 + (rng() & 0x3ff);  // f16 around 0.008
            chain.push_back(janus::pack(u.data(), scale.data(), zero.data(), N, K));
        }
    std::vector<float> x(size_t(rows) * 5632), y(size_t(rows) * 5632), reference(y.size());
    std::normal_distribution<float> normal;
    for (auto& v : x) v = normal(rng);
    if (check) {
        janus_matmul_amx_rows(0);
        janus::multiply(*chain[0], x.data(), rows, reference.data());
        if (!janus_matmul_amx_rows(amx)) return 3;
        janus::multiply(*chain[0], x.data(), rows, y.data());
        std::printf("{\"rows\": %d, \"equal\": %s}\n", rows, reference == y ? "true" : "false");
        return 0;
    }
    if (!janus_matmul_amx_rows(amx)) return 3;
    const auto run = [&] { for (auto& w : chain) janus::multiply(*w, x.data(), rows, y.data()); };
    for (int i = 0; i < 3; ++i) run();
    std::vector<double> ms;
    for (int i = 0; i < repeats; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        run();
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("{\"rows\": %d, \"median_ms\": %.2f, \"least_ms\": %.2f}\n", rows, ms[ms.size() / 2], ms[0]);
}
