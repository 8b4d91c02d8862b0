// The language model's int4 matmuls, as an OpenVINO operation of our own that takes the place of the
// CPU plugin's compressed FullyConnected (matmul.py rewires the graph). A step reads every weight once
// for 1-8 rows, so it is bound by how fast the weights stream from memory; the plugin's int4 kernels
// stream them at about half of what the memory gives on the machines we measured. Prompts' many rows
// go 8 at a time over a few blocks of weights held in cache (figures: benchmarks/results/
// design-measurements.md).
//
// Weights: NNCF's INT4_ASYM with groups of 64 along the input channels, w = (u - zero point) * scale,
// u and the zero point u4, the scale f16. Repacked once, at load, for AVX-512 VNNI: per block of 16
// output channels and per group, 8 runs of 64 bytes; byte 4c + i of run p holds input channels
// 8p + i (low nibble) and 8p + 4 + i (high nibble) of output channel c. One vpdpbusd then adds four
// input channels of 16 output channels, the activations broadcast four bytes at a time, so a run's
// two halves serve every row with one load and no horizontal sums.
// Activations: quantized per row and group to int8 on the fly (x ~ q * a, symmetric), as the plugin's
// own dynamic quantization does with its int4 kernels; a group's dot product of u and q is an exact
// integer, so a row's output is sum over groups of scale * a * (u . q - zero point * sum q).

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__AMX_INT8__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <openvino/op/op.hpp>
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <sys/mman.h>

namespace janus {

constexpr int kGroup = 64;    // input channels per scale
constexpr int kChannels = 16; // output channels per block (one vector of int32 sums)
constexpr int kRows = 8;      // rows per pass over a block's weights

struct Weights {
    int N = 0, K = 0;
    std::unique_ptr<uint8_t, decltype(&std::free)> u{nullptr, std::free};         // [N/16][K/64][8][64]
    std::unique_ptr<uint16_t, decltype(&std::free)> scale{nullptr, std::free};    // [N/16][K/64][16] f16
    std::unique_ptr<uint8_t, decltype(&std::free)> zero{nullptr, std::free};      // [N/16][K/64][16]
    int groups() const { return K / kGroup; }
};

constexpr size_t kHugePage = size_t{1} << 21;

// `count` Ts, 64-byte aligned; from 2 MiB on, whole transparent huge pages, advised before the packing
// writes them: every call streams the weights, and a core streams faster over huge pages (no TLB walk
// each 4 KiB, prefetchers not stopped at each 4 KiB edge): the chain of 168 matmuls 7-12 % faster
// (design-measurements.md). Where the system's THP mode is "never", the advice changes nothing.
template <typename T>
T* aligned(size_t count) {
    const size_t bytes = count * sizeof(T);
    if (bytes < kHugePage) return static_cast<T*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    const size_t whole = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, whole);
#if defined(MADV_HUGEPAGE)
    if (p) madvise(p, whole, MADV_HUGEPAGE);
#endif
    return static_cast<T*>(p);
}

// OpenVINO's u4 (two to a byte, the lower index in the low nibble): u [N, K], zero [N, K/64], scale
// [N, K/64] f16, repacked.
std::shared_ptr<Weights> pack(const uint8_t* u, const uint16_t* scale, const uint8_t* zero, int N, int K) {
    auto w = std::make_shared<Weights>();
    w->N = N, w->K = K;
    const int groups = K / kGroup, blocks = N / kChannels;
    w->u.reset(aligned<uint8_t>(static_cast<size_t>(N) * K / 2));
    w->scale.reset(aligned<uint16_t>(static_cast<size_t>(N) * groups));
    w->zero.reset(aligned<uint8_t>(static_cast<size_t>(N) * groups));
    if (!w->u || !w->scale || !w->zero) return nullptr;  // out of memory: the caller says so
    const auto nibble = [](const uint8_t* p, size_t i) { return static_cast<uint8_t>((p[i / 2] >> (i % 2 * 4)) & 15); };
    tbb::parallel_for(0, blocks, [&](int b) {
        for (int g = 0; g < groups; ++g) {
            uint8_t* out = w->u.get() + (static_cast<size_t>(b) * groups + g) * kGroup * kChannels / 2;
            for (int p = 0; p < kGroup / 8; ++p)
                for (int c = 0; c < kChannels; ++c) {
                    // Source bytes s0..s3 hold channels 8p..8p+7 (s0 = e0 | e1 << 4, ...); out_i = e_i | e_{4+i} << 4.
                    const uint8_t* s = u + (static_cast<size_t>(b * kChannels + c) * K + g * kGroup + p * 8) / 2;
                    uint8_t* o = out + p * 64 + c * 4;
                    o[0] = (s[0] & 15) | (s[2] & 15) << 4;
                    o[1] = (s[0] >> 4) | (s[2] & 0xF0);
                    o[2] = (s[1] & 15) | (s[3] & 15) << 4;
                    o[3] = (s[1] >> 4) | (s[3] & 0xF0);
                }
            for (int c = 0; c < kChannels; ++c) {
                const size_t at = static_cast<size_t>(b * kChannels + c) * groups + g;
                w->scale.get()[(static_cast<size_t>(b) * groups + g) * kChannels + c] = scale[at];
                w->zero.get()[(static_cast<size_t>(b) * groups + g) * kChannels + c] = nibble(zero, at);
            }
        }
    });
    return w;
}

// Activations, int8 per group of 64 (q ~ x / a, symmetric), in tiles of 8 rows (a last tile's missing
// rows are never read) laid out for the kernel: the 4-byte chunk c of a tile's row r at q[(c * 8 + r) * 4], so
// one pass's loads of a chunk for its 8 rows are 32 bytes in a row at fixed offsets.
struct Activations {
    int rows = 0, K = 0;
    bool by_row = false;                // AMX tiles' layout instead: [tiles][K/64][8][64]
    std::vector<int8_t> q;              // [tiles][K/4][8][4]
    std::vector<float> step, step_sum;  // [tiles][K/64][8]: a, and a * sum q
    int tiles() const { return (rows + kRows - 1) / kRows; }
};

// Row r of x [rows, K] quantized into its place in `a`.
void quantize_row(const float* x, Activations& a, int r) {
    const int K = a.K, groups = K / kGroup, t = r / kRows, lane = r % kRows;
    int8_t* q = a.q.data() + static_cast<size_t>(t) * K * kRows + lane * 4;
    float* step = a.step.data() + static_cast<size_t>(t) * groups * kRows + lane;
    float* step_sum = a.step_sum.data() + static_cast<size_t>(t) * groups * kRows + lane;
    int8_t* q_row = a.q.data() + (static_cast<size_t>(t) * K * kRows) + lane * kGroup;  // by_row
    for (int g = 0; g < groups; ++g) {
        const float* xg = x + g * kGroup;
        __m512 v[4], top = _mm512_setzero_ps();
        for (int i = 0; i < 4; ++i) {
            v[i] = _mm512_loadu_ps(xg + 16 * i);
            top = _mm512_max_ps(top, _mm512_abs_ps(v[i]));
        }
        const float mx = _mm512_reduce_max_ps(top), s = mx > 0.f ? mx / 127.f : 1.f;
        const __m512 inv = _mm512_set1_ps(1.f / s);
        __m512i sum = _mm512_setzero_si512();
        for (int i = 0; i < 4; ++i) {
            const __m512i r32 = _mm512_cvtps_epi32(_mm512_mul_ps(v[i], inv));  // to nearest
            sum = _mm512_add_epi32(sum, r32);
            alignas(16) int32_t chunks[4];
            _mm_store_si128(reinterpret_cast<__m128i*>(chunks), _mm512_cvtsepi32_epi8(r32));
            if (a.by_row)
                std::memcpy(q_row + (static_cast<size_t>(g) * kRows) * kGroup + 16 * i, chunks, 16);
            else
                for (int c = 0; c < 4; ++c) std::memcpy(q + ((g * 16 + i * 4 + c) * kRows) * 4, &chunks[c], 4);
        }
        step[g * kRows] = s;
        step_sum[g * kRows] = s * static_cast<float>(_mm512_reduce_add_epi32(sum));
    }
}

// dot += u . (the four int8 at p, broadcast), with the broadcast folded into the instruction's
// memory operand (compilers emit a separate vpbroadcastd for _mm512_set1_epi32).
inline __m512i dpbusd_broadcast(__m512i dot, __m512i u, const int8_t* p) {
    asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(dot) : "v"(u), "m"(*reinterpret_cast<const int32_t*>(p)));
    return dot;
}

// acc[r] += a group's integer sums dot(r) for its 16 channels, scaled: scale * a * (u . q - zero point * sum q)
// (row r's step a and a * sum q: steps[r], step_sums[r]). The epilogue of both kernels.
template <int R, typename Dot>
inline void scale_group(__m512 (&acc)[R], Dot dot, const Weights& w, size_t group, const float* steps,
                        const float* step_sums) {
    const __m512 scale = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(w.scale.get() + group * kChannels)));
    const __m512 zero = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(w.zero.get() + group * kChannels))));
    const __m512 zero_scale = _mm512_mul_ps(zero, scale);
    for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot(r)), _mm512_mul_ps(scale, _mm512_set1_ps(steps[r])), acc[r]);
        acc[r] = _mm512_fnmadd_ps(zero_scale, _mm512_set1_ps(step_sums[r]), acc[r]);
    }
}

// Output channels [16 b0, 16 b1) of the first R rows of tile t: y[r][n] for n in the blocks.
template <int R>
void blocks(const Weights& w, const Activations& x, int t, int b0, int b1, float* y, size_t y_stride) {
    const int groups = w.groups();
    const int8_t* qt = x.q.data() + static_cast<size_t>(t) * w.K * kRows;
    const float* steps = x.step.data() + static_cast<size_t>(t) * groups * kRows;
    const float* step_sums = x.step_sum.data() + static_cast<size_t>(t) * groups * kRows;
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int b = b0; b < b1; ++b) {
        __m512 acc[R];
        for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
        const size_t first = static_cast<size_t>(b) * groups;
        for (int g = 0; g < groups; ++g) {
            const uint8_t* u = w.u.get() + (first + g) * (kGroup * kChannels / 2);
            const int8_t* q = qt + static_cast<size_t>(g) * kGroup * kRows;
            // Further ahead for more rows: their compute hides less of the wait for memory.
            const uint8_t* ahead = u + (R <= 2 ? 2048 : 8192);
            for (int line = 0; line < 8; ++line) _mm_prefetch(reinterpret_cast<const char*>(ahead + 64 * line), _MM_HINT_T0);
            __m512i dot[R], dot2[R];  // two chains a row: one was bound by vpdpbusd's latency
            for (int r = 0; r < R; ++r) dot[r] = _mm512_setzero_si512(), dot2[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int p = 0; p < kGroup / 8; ++p) {
                const __m512i v = _mm512_load_si512(u + 64 * p);
                const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) {
                    dot[r] = dpbusd_broadcast(dot[r], lo, q + ((2 * p) * kRows + r) * 4);
                    dot2[r] = dpbusd_broadcast(dot2[r], hi, q + ((2 * p + 1) * kRows + r) * 4);
                }
            }
            scale_group(acc, [&](int r) { return _mm512_add_epi32(dot[r], dot2[r]); }, w, first + g, steps + g * kRows,
                        step_sums + g * kRows);
        }
        for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + r * y_stride + b * kChannels, acc[r]);
    }
}

#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
// On CPUs with AMX a group's 64 inputs x 16 channels for up to 8 rows are one tile product, where
// vpdpbusd takes 16 instructions a row: several rows make the vector kernel compute-bound on these
// CPUs (design-measurements.md). The weights are unpacked to bytes in the B tile's layout (row j:
// inputs 4j..4j+3 of the 16 channels, as a run packs them: its low nibbles are row 2p, its high
// nibbles row 2p + 1), the activations are an R x 64 tile, and TDPBSUD (signed activations,
// unsigned weights) gives the group's R x 16 integer sums, scaled as the vector kernel's (scale_group).
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Linux hands out AMX's tile state only to processes that ask for it.
bool amx_permitted() {
    static const bool ok = [] {
        constexpr long kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
        return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
    }();
    return ok;
}

inline void unpack_group(const uint8_t* u, uint8_t* out) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int p = 0; p < kGroup / 8; ++p) {
        const __m512i v = _mm512_load_si512(u + 64 * p);
        _mm512_store_si512(out + 128 * p, _mm512_and_si512(v, low));
        _mm512_store_si512(out + 128 * p + 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
    }
}

// GCC's AMX intrinsics paste their tile numbers into the assembly as tokens; these take them as
// template arguments. Each names the memory it reads or writes, so the compiler keeps the stores that
// unpack a group before the tile load that reads them, and the loads of its sums after the tile store.
using GroupBytes = uint8_t[kGroup * kChannels];  // a group's weights, unpacked: 16 rows of 64 bytes
using GroupRows = int8_t[kRows * kGroup];        // a group's activations: up to 8 rows of 64
using GroupSums = int32_t[kRows * kChannels];    // a group's products: up to 8 rows of 16

template <int A, int B, int C>
inline void tile_product(const GroupRows& a, const GroupBytes& b) {  // tile C = a (R x 64) times b (16 x 64)
    asm volatile("tileloadd (%1,%2,1), %%tmm%c3" ::"m"(a), "r"(&a), "r"(static_cast<long>(kGroup)), "i"(A));
    asm volatile("tileloadd (%1,%2,1), %%tmm%c3" ::"m"(b), "r"(&b), "r"(64L), "i"(B));
    asm volatile("tilezero %%tmm%c0" ::"i"(C));
    asm volatile("tdpbsud %%tmm%c0, %%tmm%c1, %%tmm%c2" ::"i"(B), "i"(A), "i"(C));
}

template <int C>
inline void tile_store(GroupSums& sums) {
    asm volatile("tilestored %%tmm%c2, (%1,%3,1)" : "=m"(sums) : "r"(&sums), "i"(C), "r"(64L));
}

// Software-pipelined, a pass per two groups: the pass unpacks groups g, g+1, starts the tile
// products of g-2, g-1 (in C tiles 4, 5 or 6, 7 by turns), stores the sums of g-4, g-3 (whose
// products the last pass started) and scales g-6, g-5 in. Nothing waits on the step before it: no
// tile load on the stores that unpacked its bytes, no tile store on its product, no vector load on
// the tile store of its sums (none of these are forwarded).
template <int R>
void blocks_amx(const Weights& w, const Activations& x, int t, int b0, int b1, float* y, size_t y_stride) {
    TileConfig cfg;
    for (int i : {0, 1, 4, 5, 6, 7}) cfg.rows[i] = static_cast<uint8_t>(R), cfg.colsb[i] = 64;
    for (int i : {2, 3}) cfg.rows[i] = 16, cfg.colsb[i] = 64;
    _tile_loadconfig(&cfg);
    alignas(64) GroupBytes unpacked[4];
    alignas(64) GroupSums sums[4];
    const int groups = w.groups();
    const int8_t* qt = x.q.data() + static_cast<size_t>(t) * w.K * kRows;
    const float* steps = x.step.data() + static_cast<size_t>(t) * groups * kRows;
    const float* step_sums = x.step_sum.data() + static_cast<size_t>(t) * groups * kRows;
    constexpr size_t kPacked = kGroup * kChannels / 2;
    const auto q = [&](int g) -> const GroupRows& { return *reinterpret_cast<const GroupRows*>(qt + static_cast<size_t>(g) * kGroup * kRows); };
    for (int b = b0; b < b1; ++b) {
        const size_t first = static_cast<size_t>(b) * groups;
        const uint8_t* bu = w.u.get() + first * kPacked;
        __m512 acc[R];
        for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
        const auto scale_in = [&](int g) {
            const int32_t* s = sums[g & 3];
            scale_group(acc, [&](int r) { return _mm512_load_si512(s + r * kChannels); }, w, first + g, steps + g * kRows,
                        step_sums + g * kRows);
        };
        // One pass: its products go to C tiles C, C + 1 (4, 5 and 6, 7 by turns), the last pass's are
        // in the other two. A macro, not a lambda: GCC compiled the lambda's form 20 % slower.
#define JANUS_AMX_PASS(G, C)                                                                                      \
    do {                                                                                                          \
        const int g = (G);                                                                                        \
        if (g < groups) {                                                                                         \
            const uint8_t* u = bu + static_cast<size_t>(g) * kPacked;                                             \
            /* into L2, well ahead: with the tiles busy, memory's wait is hidden less than the vector kernel's */ \
            for (int line = 0; line < 16; ++line)                                                                 \
                _mm_prefetch(reinterpret_cast<const char*>(u + 32768 + 64 * line), _MM_HINT_T1);                  \
            unpack_group(u, unpacked[g & 3]);                                                                     \
            if (g + 1 < groups) unpack_group(u + kPacked, unpacked[(g + 1) & 3]);                                 \
        }                                                                                                         \
        if (const int e = g - 2; e >= 0 && e < groups) {                                                          \
            tile_product<0, 2, C>(q(e), unpacked[e & 3]);                                                         \
            if (e + 1 < groups) tile_product<1, 3, C + 1>(q(e + 1), unpacked[(e + 1) & 3]);                      \
        }                                                                                                         \
        if (const int s = g - 4; s >= 0 && s < groups) {                                                          \
            tile_store<10 - C>(sums[s & 3]);                                                                      \
            if (s + 1 < groups) tile_store<11 - C>(sums[(s + 1) & 3]);                                            \
        }                                                                                                         \
        if (const int e = g - 6; e >= 0 && e < groups) {                                                          \
            scale_in(e);                                                                                          \
            if (e + 1 < groups) scale_in(e + 1);                                                                  \
        }                                                                                                         \
    } while (0)
        for (int g4 = 0; g4 < groups + 6; g4 += 4) {
            JANUS_AMX_PASS(g4, 4);
            JANUS_AMX_PASS(g4 + 2, 6);
        }
#undef JANUS_AMX_PASS
        for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + r * y_stride + b * kChannels, acc[r]);
    }
    _tile_release();
}
constexpr bool kHaveAmx = true;
#else
constexpr bool kHaveAmx = false;
bool amx_permitted() { return false; }
template <int R>
void blocks_amx(const Weights&, const Activations&, int, int, int, float*, size_t) {}
#endif

// Rows from which a call runs on AMX's tiles where the CPU has them (set once by janus_matmul_amx_rows).
int amx_rows = 0;  // 0: never

template <int R>
void rows_of(const Weights& w, const Activations& x, int t, int b0, int b1, float* y) {
    if (x.by_row)
        blocks_amx<R>(w, x, t, b0, b1, y, w.N);
    else
        blocks<R>(w, x, t, b0, b1, y, w.N);
}

void rows_of_blocks(int R, const Weights& w, const Activations& x, int t, int b0, int b1, float* y) {
    switch (R) {
    case 1: return rows_of<1>(w, x, t, b0, b1, y);
    case 2: return rows_of<2>(w, x, t, b0, b1, y);
    case 3: return rows_of<3>(w, x, t, b0, b1, y);
    case 4: return rows_of<4>(w, x, t, b0, b1, y);
    case 5: return rows_of<5>(w, x, t, b0, b1, y);
    case 6: return rows_of<6>(w, x, t, b0, b1, y);
    case 7: return rows_of<7>(w, x, t, b0, b1, y);
    default: return rows_of<8>(w, x, t, b0, b1, y);
    }
}

// y [rows, N] = x [rows, K] times the weights, transposed. Threads take runs of output blocks; within
// a run, rows go 8 at a time over each few blocks, so the blocks' weights come from memory once.
void multiply(const Weights& w, const float* x, int rows, float* y) {
    thread_local Activations mine;
    Activations& a = mine;  // this thread's: a thread_local named inside the lambdas would be each worker's own
    a.rows = rows, a.K = w.K;
    a.by_row = amx_rows > 0 && rows >= amx_rows;
    a.q.resize(static_cast<size_t>(a.tiles()) * kRows * w.K);  // a last tile's missing rows are never read
    a.step.resize(static_cast<size_t>(a.tiles()) * kRows * w.groups());
    a.step_sum.resize(a.step.size());
    const auto quantize = [&](int t) {  // a tile's rows share cache lines: one thread writes them all
        for (int r = t * kRows; r < std::min(rows, (t + 1) * kRows); ++r) quantize_row(x + static_cast<size_t>(r) * w.K, a, r);
    };
    // A step's few rows in this thread: handing them to the pool cost more than it saved
    // (design-measurements.md); prompt-sized calls in parallel.
    if (rows <= kRows)
        quantize(0);
    else
        tbb::parallel_for(0, a.tiles(), quantize);
    const int all = w.N / kChannels, few = rows <= kRows ? all : 4;  // blocks per pass: a pass's weights stay in cache
    tbb::parallel_for(tbb::blocked_range<int>(0, all, 4), [&](const tbb::blocked_range<int>& range) {
        for (int b = range.begin(); b < range.end(); b += few) {
            const int end = std::min(range.end(), b + few);
            for (int t = 0; t < a.tiles(); ++t)
                rows_of_blocks(std::min(kRows, rows - t * kRows), w, a, t, b, end, y + static_cast<size_t>(t) * kRows * w.N);
        }
    }, tbb::static_partitioner());
}

// ---- weights handed over from Python (matmul.py) ----
// pack() returns an id; an operation reading that id takes a share of the weights, so they live as
// long as some graph holds an operation on them, and `forget` drops the registry's own share.
std::mutex weights_lock;
std::map<int64_t, std::shared_ptr<Weights>> registered;
int64_t next_id = 1;

std::shared_ptr<Weights> registered_weights(int64_t id) {
    std::lock_guard<std::mutex> guard(weights_lock);
    const auto it = registered.find(id);
    return it == registered.end() ? nullptr : it->second;
}

// Input: x [..., K] f32; output [..., N] f32. Attributes: the weights' id, N and K.
class Int4MatMul : public ov::op::Op {
public:
    OPENVINO_OP("JanusInt4MatMul", "janus_ov");

    Int4MatMul() = default;
    Int4MatMul(const ov::Output<ov::Node>& x, std::shared_ptr<Weights> weights, int64_t id)
        : Op({x}), m_weights(std::move(weights)), m_id(id) {
        constructor_validate_and_infer_types();
    }
    void validate_and_infer_types() override {
        auto shape = get_input_partial_shape(0);
        NODE_VALIDATION_CHECK(this, m_weights, "no int4 weights registered under id ", m_id);
        NODE_VALIDATION_CHECK(this, shape.rank().is_static() && shape.size() >= 1 &&
                                        shape[shape.size() - 1].compatible(m_weights->K), "input's last dimension is not ", m_weights->K);
        shape[shape.size() - 1] = m_weights->N;
        set_output_type(0, ov::element::f32, shape);
    }
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<Int4MatMul>(args.at(0), m_weights, m_id);
    }
    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("weights", m_id);
        if (!m_weights) m_weights = registered_weights(m_id);  // read from an IR: take a share
        return true;
    }
    bool has_evaluate() const override { return true; }
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        auto shape = inputs[0].get_shape();
        if (shape.empty() || shape.back() != static_cast<size_t>(m_weights->K)) return false;
        const size_t rows = ov::shape_size(shape) / shape.back();
        shape.back() = m_weights->N;
        outputs[0].set_shape(shape);
        if (rows) multiply(*m_weights, inputs[0].data<const float>(), static_cast<int>(rows), outputs[0].data<float>());
        return true;
    }

private:
    std::shared_ptr<Weights> m_weights;
    int64_t m_id = 0;
};

}  // namespace janus

extern "C" {

// u: [N, K] u4, zero: [N, K/64] u4 (OpenVINO's packing), scale: [N, K/64] f16 bits. K a multiple of
// 64, N of 16 (matmul.py checks). Returns the weights' id, 0 if there was no memory for them.
int64_t janus_matmul_pack(const uint8_t* u, const uint16_t* scale, const uint8_t* zero, int N, int K) {
    auto weights = janus::pack(u, scale, zero, N, K);
    if (!weights) return 0;
    std::lock_guard<std::mutex> guard(janus::weights_lock);
    janus::registered[janus::next_id] = std::move(weights);
    return janus::next_id++;
}

// Calls of at least `rows` rows run on AMX's tiles (0: none). Returns false, changing nothing, where
// this build or the CPU has no AMX or the kernel refuses the process its tile state.
bool janus_matmul_amx_rows(int rows) {
    if (rows > 0 && !(janus::kHaveAmx && janus::amx_permitted())) return false;
    janus::amx_rows = rows;
    return true;
}

void janus_matmul_forget(int64_t id) {
    std::lock_guard<std::mutex> guard(janus::weights_lock);
    janus::registered.erase(id);
}
}
#endif  // AVX-512 VNNI
