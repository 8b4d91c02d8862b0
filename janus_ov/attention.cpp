// The language model's attention over its paged KV cache, as an OpenVINO operation of our own that
// takes the place of the CPU plugin's PagedAttention (attention.py builds this file and rewires the
// graph). Same cache layout, same result within float rounding; faster where our steps
// spend their time: one query token for each of several sequences (a CFG image batch's rows, chats
// decoding side by side), where the plugin's per-token loop reads its u8 cache at a third of what the
// memory gives (figures: benchmarks/results/design-measurements.md).
//
// The cache layout is the plugin's own, so a prompt model that keeps the plugin's PagedAttention
// (runtime.prompt_config) reads and writes the same tensors:
//   keys   [blocks, kv heads, 8 + 32, S] u8, quantized by channel over each 32-token block: f32
//          scale[S] and f32 zero point[S] (8 rows of S bytes), then 32 token rows of S u8;
//   values [blocks, kv heads, 32, 8 + S] u8, quantized by token: f32 scale, f32 zero point, S u8.
//   x = (u - zero point) * scale; u = round(x / scale + zero point), scale = (max - min) / 255.
// Keys share one scale per channel over a block's tokens: a new token outside a channel's range
// re-quantizes that channel over the block's tokens (the plugin re-quantizes every channel each time).
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/op/op.hpp>
#include <openvino/op/util/unary_elementwise_arithmetic.hpp>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace janus {

constexpr int kBlock = 32;  // tokens per cache block: the plugin's on CPU
constexpr int kTile = 16;   // prompt queries scored together against each block

struct Cache {
    uint8_t* keys;
    uint8_t* values;
    int kv_heads, S;
    size_t key_block() const { return static_cast<size_t>(kBlock + 8) * S; }
    size_t value_row() const { return 8 + static_cast<size_t>(S); }
    size_t value_block() const { return kBlock * value_row(); }
    uint8_t* key(int block, int h) const { return keys + (static_cast<size_t>(block) * kv_heads + h) * key_block(); }
    uint8_t* value(int block, int h) const { return values + (static_cast<size_t>(block) * kv_heads + h) * value_block(); }
};

// ---- vector helpers: AVX-512 where the build has it, loops the compiler vectorizes elsewhere ----

#if defined(__AVX512F__)
inline __m512 u8x16(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// exp(x) for x <= 0: 2^(x log2 e), the fraction by a degree-6 polynomial (relative error ~2e-7).
inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}
#endif

// s[t] = exp(s[t] - mx) for t < n; returns their sum.
float exp_sum(float* s, int n, float mx) {
    int t = 0;
    float total = 0.f;
#if defined(__AVX512F__)
    const __m512 mv = _mm512_set1_ps(mx);
    __m512 sum = _mm512_setzero_ps();
    for (; t + 16 <= n; t += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), mv));
        _mm512_storeu_ps(s + t, e);
        sum = _mm512_add_ps(sum, e);
    }
    total = _mm512_reduce_add_ps(sum);
#endif
    for (; t < n; ++t) total += (s[t] = std::exp(s[t] - mx));
    return total;
}

void axpy(float* y, float w, const float* x, int S) {
#pragma omp simd
    for (int c = 0; c < S; ++c) y[c] += w * x[c];
}

void axpy_u8(float* y, float w, const uint8_t* u, int S) {
#if defined(__AVX512F__)
    const __m512 wv = _mm512_set1_ps(w);
    for (int c = 0; c < S; c += 16) _mm512_storeu_ps(y + c, _mm512_fmadd_ps(wv, u8x16(u + c), _mm512_loadu_ps(y + c)));
#else
#pragma omp simd
    for (int c = 0; c < S; ++c) y[c] += w * static_cast<float>(u[c]);
#endif
}

// scores[t] = (qs . u_t - c0) * scale for `valid` key rows of S u8.
void key_scores(const float* qs, float c0, const uint8_t* u, int valid, int S, float scale, float* scores) {
    int t = 0;
#if defined(__AVX512F__)
    const int n = S / 16;
    __m512 qv[16];
    for (int i = 0; i < n; ++i) qv[i] = _mm512_loadu_ps(qs + 16 * i);
    for (; t + 4 <= valid; t += 4) {  // four rows a pass share the query's registers
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        const uint8_t* r = u + static_cast<size_t>(t) * S;
        for (int i = 0; i < n; ++i) {
            a0 = _mm512_fmadd_ps(qv[i], u8x16(r + 16 * i), a0);
            a1 = _mm512_fmadd_ps(qv[i], u8x16(r + S + 16 * i), a1);
            a2 = _mm512_fmadd_ps(qv[i], u8x16(r + 2 * S + 16 * i), a2);
            a3 = _mm512_fmadd_ps(qv[i], u8x16(r + 3 * S + 16 * i), a3);
        }
        scores[t] = (_mm512_reduce_add_ps(a0) - c0) * scale;
        scores[t + 1] = (_mm512_reduce_add_ps(a1) - c0) * scale;
        scores[t + 2] = (_mm512_reduce_add_ps(a2) - c0) * scale;
        scores[t + 3] = (_mm512_reduce_add_ps(a3) - c0) * scale;
    }
#endif
    for (; t < valid; ++t) {
        const uint8_t* r = u + static_cast<size_t>(t) * S;
        float a = 0.f;
#pragma omp simd reduction(+ : a)
        for (int c = 0; c < S; ++c) a += qs[c] * static_cast<float>(r[c]);
        scores[t] = (a - c0) * scale;
    }
}

void prefetch(const uint8_t* p, size_t bytes) {
    for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i);
}

// ---- writing new tokens ----

// x -> u8 with a scale and zero point (x >= lo maps to >= 0; rounding half up, then clamped).
inline uint8_t quantize(float x, float inv_scale, float zp) {
    return static_cast<uint8_t>(static_cast<int>(std::min(255.f, std::max(0.f, x * inv_scale + zp)) + 0.5f));
}

constexpr float kFlatScale = 1e-4f;  // the scale of a channel whose values are all equal

inline void set_params(float lo, float hi, float* scale, float* zp) {
    *scale = (hi - lo) / 255.f;
    if (*scale == 0.f) *scale = kFlatScale;
    *zp = -lo / *scale;
}

// A value row: u[0:S] of x[0:S] with its own scale and zero point (stored before it).
void write_value(const float* x, int S, uint8_t* row) {
    float lo = x[0], hi = x[0];
#pragma omp simd reduction(min : lo) reduction(max : hi)
    for (int c = 0; c < S; ++c) lo = std::min(lo, x[c]), hi = std::max(hi, x[c]);
    float scale_zp[2];
    set_params(lo, hi, &scale_zp[0], &scale_zp[1]);
    const float inv = 1.f / scale_zp[0], zp = scale_zp[1];
    uint8_t* u = row + 8;
#pragma omp simd
    for (int c = 0; c < S; ++c) u[c] = quantize(x[c], inv, zp);
    std::memcpy(row, scale_zp, sizeof(scale_zp));
}

// New key rows [old, end) of one block (x: row t at x + (t - old) * stride). Each channel keeps one
// scale over the block's tokens: a channel whose new values fall inside the range it already covers
// keeps it (its old tokens untouched); one whose range grows is re-quantized over old and new tokens.
// Nearly every new token widens some channels (a block's first tokens most of all), so the
// re-quantization runs row by row over all channels at once, masked to the widening ones: channel by
// channel over strided rows it cost a large share of an image step (design-measurements.md).
void write_keys(uint8_t* block, int S, int old, int end, const float* x, size_t stride, std::vector<float>& work) {
    float* scale = reinterpret_cast<float*>(block);  // the header is 8 S-byte rows: 4-byte aligned
    float* zp = scale + S;
    uint8_t* u = block + 8 * S;
    work.resize(5 * static_cast<size_t>(S));
    float* lo = work.data();
    float* hi = lo + S;
    float* grow = hi + S;  // 1 where the channel's range must grow, else 0
    float* new_scale = grow + S;
    float* new_zp = new_scale + S;
    std::memcpy(lo, x, S * sizeof(float));
    std::memcpy(hi, x, S * sizeof(float));
    for (int t = old + 1; t < end; ++t) {
        const float* r = x + (t - old) * stride;
#pragma omp simd
        for (int c = 0; c < S; ++c) lo[c] = std::min(lo[c], r[c]), hi[c] = std::max(hi[c], r[c]);
    }
    if (old == 0) {
        for (int c = 0; c < S; ++c) set_params(lo[c], hi[c], &scale[c], &zp[c]);
    } else {
        int growing = 0;
        for (int c = 0; c < S; ++c) {
            const float have_lo = -zp[c] * scale[c], have_hi = have_lo + 255.f * scale[c];
            grow[c] = lo[c] >= have_lo && hi[c] <= have_hi ? 0.f : 1.f;
            growing += grow[c] != 0.f;
        }
        if (growing) {
            // The old tokens lie within the range their channel covers (u in 0..255), and its ends are
            // tokens' own values (the range was last set from its tokens' least and greatest), so the new
            // range is that range widened to the new tokens: no pass over the old tokens to find it. A
            // channel whose tokens were all equal has set_params' stand-in scale: its range is one value.
            for (int c = 0; c < S; ++c) {
                const float have_lo = -zp[c] * scale[c];
                const float have_hi = scale[c] == kFlatScale ? have_lo : (255.f - zp[c]) * scale[c];
                set_params(std::min(lo[c], have_lo), std::max(hi[c], have_hi), &new_scale[c], &new_zp[c]);
            }
            for (int t = 0; t < old; ++t) {
                uint8_t* row = u + t * S;
#pragma omp simd
                for (int c = 0; c < S; ++c) {
                    const uint8_t q = quantize((row[c] - zp[c]) * scale[c], 1.f / new_scale[c], new_zp[c]);
                    row[c] = grow[c] != 0.f ? q : row[c];
                }
            }
            for (int c = 0; c < S; ++c)
                if (grow[c] != 0.f) scale[c] = new_scale[c], zp[c] = new_zp[c];
        }
    }
    for (int t = old; t < end; ++t) {
        const float* r = x + (t - old) * stride;
        uint8_t* dst = u + t * S;
#pragma omp simd
        for (int c = 0; c < S; ++c) dst[c] = quantize(r[c], 1.f / scale[c], zp[c]);
    }
}

// Tokens [first, first + count) of a sequence into kv head h's blocks (k, v: the first token's
// rows, then one row per `stride` floats).
void write_tokens(const Cache& cache, const int32_t* table, int first, int count, const float* k, const float* v,
                  size_t stride, int h, std::vector<float>& work) {
    for (int i = 0; i < count; ++i) {
        const int pos = first + i;
        write_value(v + i * stride, cache.S, cache.value(table[pos / kBlock], h) + (pos % kBlock) * cache.value_row());
    }
    for (int b = first / kBlock; b <= (first + count - 1) / kBlock; ++b) {
        const int old = std::max(0, first - b * kBlock);  // tokens the block holds already
        const int end = std::min(first + count - b * kBlock, kBlock);
        write_keys(cache.key(table[b], h), cache.S, old, end, k + (b * kBlock + old - first) * stride, stride, work);
    }
}

// ---- attention ----

// One query's scores over a block's keys, sr[0:32], n of them valid: turned into exp(score * scale - m')
// with m' the new running maximum (zero past n, so a row may be paired with a longer one), the
// running sum l updated; returns the correction exp(m - m') for the sums so far (1 when n is 0).
float softmax_block(float* sr, int n, float scale, float& m, float& l) {
    if (n == 0) {
        std::fill(sr, sr + kBlock, 0.f);
        return 1.f;
    }
#if defined(__AVX512F__)
    const __mmask16 k0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
    const __mmask16 k1 = n <= 16 ? 0 : n >= 32 ? 0xFFFF : static_cast<__mmask16>((1u << (n - 16)) - 1);
    const __m512 sc = _mm512_set1_ps(scale), none = _mm512_set1_ps(-INFINITY);
    const __m512 x0 = _mm512_mask_mul_ps(none, k0, _mm512_loadu_ps(sr), sc);
    const __m512 x1 = _mm512_mask_mul_ps(none, k1, _mm512_loadu_ps(sr + 16), sc);
    const float mx = std::max(m, _mm512_reduce_max_ps(_mm512_max_ps(x0, x1)));
    const __m512 mv = _mm512_set1_ps(mx);
    const __m512 e0 = _mm512_maskz_mov_ps(k0, exp16(_mm512_sub_ps(x0, mv)));
    const __m512 e1 = _mm512_maskz_mov_ps(k1, exp16(_mm512_sub_ps(x1, mv)));
    _mm512_storeu_ps(sr, e0);
    _mm512_storeu_ps(sr + 16, e1);
    const float total = _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
#else
    float mx = m;
    for (int t = 0; t < n; ++t) mx = std::max(mx, sr[t] *= scale);
    const float total = exp_sum(sr, n, mx);
    std::fill(sr + n, sr + kBlock, 0.f);
#endif
    const float correction = std::exp(m - mx);  // exp(-inf) = 0 on the first block
    l = l * correction + total;
    m = mx;
    return correction;
}

#if defined(__AVX512F__)
// Four sums of 16 lanes each, as one vector of 4.
inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512 u = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))),
                                   _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// One decoding row's attention for kv heads [h0, h1) (and the query heads that read them), S = 16 * N,
// in one pass over the blocks with an online softmax. Blocks outside, heads inside: a block's heads
// lie side by side in the cache, so the reads are long runs; each (block, head)'s keys and values
// are read once, while the next (block, head)'s are prefetched into L2 (one item ahead: a whole row of
// heads ahead, into L1, was 5-10 % slower); the query and the output of the head at hand stay in
// registers. q, out: the row's heads * S floats.
template <int N>
void decode_heads(const Cache& cache, const int32_t* table, int kv, const float* q, int h0, int h1, int group,
                  float scale, float* out, std::vector<float>& state) {
    constexpr int S = 16 * N;
    const int blocks = (kv + kBlock - 1) / kBlock, count = (h1 - h0) * group;
    state.assign(static_cast<size_t>(count) * (S + 3), 0.f);
    float* accs = state.data();  // per query head: acc[S], then running max, sum and zero-point term
    float* ms = accs + count * S;
    float* ls = ms + count;
    float* zeros = ls + count;
    std::fill(ms, ms + count, -INFINITY);
    alignas(64) float s[kBlock];
    __m512 qs[N], acc[N];
    for (int j = 0; j < blocks; ++j) {
        const int valid = std::min(kBlock, kv - j * kBlock);
        for (int i_h = 0; i_h < count; ++i_h) {
            const int hk = h0 + i_h / group, h = h0 * group + i_h;
            const uint8_t* p = cache.key(table[j], hk);
            const uint8_t* vp = cache.value(table[j], hk);
            const int ahead = std::min(j * count + i_h + 1, blocks * count - 1);
            const int next_j = ahead / count, next_h = h0 + ahead % count / group;
            const uint8_t* next_k = cache.key(table[next_j], next_h);
            const uint8_t* next_v = cache.value(table[next_j], next_h);
            // Keys: the block's per-channel scale folded into the query, its zero point into c0.
            const float* ks = reinterpret_cast<const float*>(p);
            __m512 c0v = _mm512_setzero_ps();
            for (int i = 0; i < N; ++i) {
                qs[i] = _mm512_mul_ps(_mm512_loadu_ps(q + h * S + 16 * i), _mm512_loadu_ps(ks + 16 * i));
                c0v = _mm512_fmadd_ps(qs[i], _mm512_loadu_ps(ks + S + 16 * i), c0v);
            }
            const __m128 c0 = _mm_set1_ps(_mm512_reduce_add_ps(c0v));
            const uint8_t* u = p + 8 * S;
            for (int t = 0; t < valid; t += 4) {  // may score up to 3 rows past `valid`: inside the block, unused
                for (size_t b = t / 4 * cache.key_block() / 8; b < (t / 4 + 1) * cache.key_block() / 8; b += 64)
                    __builtin_prefetch(next_k + b, 0, 2);
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                const uint8_t* r = u + t * S;
                for (int i = 0; i < N; ++i) {
                    a0 = _mm512_fmadd_ps(qs[i], u8x16(r + 16 * i), a0);
                    a1 = _mm512_fmadd_ps(qs[i], u8x16(r + S + 16 * i), a1);
                    a2 = _mm512_fmadd_ps(qs[i], u8x16(r + 2 * S + 16 * i), a2);
                    a3 = _mm512_fmadd_ps(qs[i], u8x16(r + 3 * S + 16 * i), a3);
                }
                _mm_store_ps(s + t, _mm_sub_ps(sum4(a0, a1, a2, a3), c0));
            }
            const float correction = softmax_block(s, valid, scale, ms[i_h], ls[i_h]);
            // Values: each row's scale folded into its weight, its zero point into one sum per head.
            float zero = zeros[i_h] * correction;
            const __m512 cv = _mm512_set1_ps(correction);
            float* a = accs + i_h * S;
            for (int i = 0; i < N; ++i) acc[i] = _mm512_mul_ps(_mm512_loadu_ps(a + 16 * i), cv);
            for (int t = 0; t < valid; ++t) {
                const uint8_t* row = vp + t * (8 + S);
                for (int b = 0; b < 8 + S; b += 64) __builtin_prefetch(next_v + t * (8 + S) + b, 0, 2);
                float scale_zp[2];
                std::memcpy(scale_zp, row, sizeof(scale_zp));
                const float w = s[t] * scale_zp[0];
                zero += w * scale_zp[1];
                const __m512 wv = _mm512_set1_ps(w);
                for (int i = 0; i < N; ++i) acc[i] = _mm512_fmadd_ps(wv, u8x16(row + 8 + 16 * i), acc[i]);
            }
            for (int i = 0; i < N; ++i) _mm512_storeu_ps(a + 16 * i, acc[i]);
            zeros[i_h] = zero;
        }
    }
    for (int i_h = 0; i_h < count; ++i_h) {
        const float inv = 1.f / ls[i_h];
        float* o = out + (h0 * group + i_h) * S;
        for (int c = 0; c < S; ++c) o[c] = (accs[i_h * S + c] - zeros[i_h]) * inv;
    }
}
#endif

// The portable form (builds without AVX-512, head sizes not a multiple of 16): one query head over its
// sequence's first kv tokens, keys then values, the dequantization folded into the query once per key
// block and into one scalar per value row.
void decode_head(const Cache& cache, const int32_t* table, int kv, const float* q, int hk, float scale, float* out,
                 std::vector<float>& scores, std::vector<float>& work) {
    const int S = cache.S, blocks = (kv + kBlock - 1) / kBlock;
    scores.resize(static_cast<size_t>(blocks) * kBlock);
    work.resize(2 * static_cast<size_t>(S));
    float* qs = work.data();
    float* acc = qs + S;
    float mx = -INFINITY;
    for (int j = 0; j < blocks; ++j) {
        const uint8_t* p = cache.key(table[j], hk);
        if (j + 1 < blocks) prefetch(cache.key(table[j + 1], hk), cache.key_block());
        const float* ks = reinterpret_cast<const float*>(p);
        const float* kz = ks + S;
        float c0 = 0.f;
        for (int c = 0; c < S; ++c) {
            qs[c] = q[c] * ks[c];
            c0 += qs[c] * kz[c];
        }
        const int valid = std::min(kBlock, kv - j * kBlock);
        key_scores(qs, c0, p + 8 * S, valid, S, scale, &scores[j * kBlock]);
        for (int t = 0; t < valid; ++t) mx = std::max(mx, scores[j * kBlock + t]);
    }
    const float inv = 1.f / exp_sum(scores.data(), kv, mx);
    std::fill(acc, acc + S, 0.f);
    float zero = 0.f;  // sum of w_t * zero point_t: taken off every channel at the end
    for (int j = 0; j < blocks; ++j) {
        const uint8_t* p = cache.value(table[j], hk);
        if (j + 1 < blocks) prefetch(cache.value(table[j + 1], hk), cache.value_block());
        const int valid = std::min(kBlock, kv - j * kBlock);
        for (int t = 0; t < valid; ++t) {
            const uint8_t* row = p + t * cache.value_row();
            float scale_zp[2];
            std::memcpy(scale_zp, row, sizeof(scale_zp));
            const float w = scores[j * kBlock + t] * inv * scale_zp[0];
            zero += w * scale_zp[1];
            axpy_u8(acc, w, row + 8, S);
        }
    }
    for (int c = 0; c < S; ++c) out[c] = acc[c] - zero;
}

// A decoding row's attention for kv heads [h0, h1): the vector form where it applies.
void decode_row(const Cache& cache, const int32_t* table, int kv, const float* q, int h0, int h1, int group,
                float scale, float* out, std::vector<float>& scores, std::vector<float>& work) {
#if defined(__AVX512F__)
    switch (cache.S) {
        case 16: return decode_heads<1>(cache, table, kv, q, h0, h1, group, scale, out, work);
        case 32: return decode_heads<2>(cache, table, kv, q, h0, h1, group, scale, out, work);
        case 64: return decode_heads<4>(cache, table, kv, q, h0, h1, group, scale, out, work);
        case 128: return decode_heads<8>(cache, table, kv, q, h0, h1, group, scale, out, work);
        case 256: return decode_heads<16>(cache, table, kv, q, h0, h1, group, scale, out, work);
    }
#endif
    for (int h = h0 * group; h < h1 * group; ++h)
        decode_head(cache, table, kv, q + h * cache.S, h / group, scale, out + h * cache.S, scores, work);
}

// Work items per sequence: its kv heads in this many runs, so that a call of few sequences still
// gives every thread a couple of items (a chat's one row: 4 on 2 threads) while many sequences keep
// long runs of heads.
int head_runs(int sequences, int kv_heads) {
    const int threads = tbb::this_task_arena::max_concurrency();
    return std::clamp((2 * threads + sequences - 1) / sequences, 1, kv_heads);
}

#if defined(__AVX512F__)
// scores[r][t] += q_r . k_t for Q queries from r0: per channel one broadcast of each query's value
// against the block's 32 keys (two vectors), 2Q independent sums in flight.
template <int Q>
void score_pass(const float* q, size_t q_stride, const float* kt, int S, float* scores) {
    __m512 a[2 * Q];
    for (auto& x : a) x = _mm512_setzero_ps();
    for (int c = 0; c < S; ++c) {
        const __m512 k0 = _mm512_loadu_ps(kt + c * kBlock), k1 = _mm512_loadu_ps(kt + c * kBlock + 16);
        for (int i = 0; i < Q; ++i) {
            const __m512 qc = _mm512_set1_ps(q[i * q_stride + c]);
            a[2 * i] = _mm512_fmadd_ps(qc, k0, a[2 * i]);
            a[2 * i + 1] = _mm512_fmadd_ps(qc, k1, a[2 * i + 1]);
        }
    }
    for (int i = 0; i < Q; ++i) {
        _mm512_storeu_ps(scores + i * kBlock, a[2 * i]);
        _mm512_storeu_ps(scores + i * kBlock + 16, a[2 * i + 1]);
    }
}
#endif

// scores[r][t] = q_r . k_t (t < 32) for `rows` queries, keys transposed (kt[c * 32 + t]): no
// horizontal sums; eight queries a pass share each load of the keys.
void tile_scores(const float* q, size_t q_stride, int rows, const float* kt, int S, float* scores) {
    int r = 0;
#if defined(__AVX512F__)
    for (; r + 8 <= rows; r += 8) score_pass<8>(q + r * q_stride, q_stride, kt, S, scores + r * kBlock);
    for (; r + 4 <= rows; r += 4) score_pass<4>(q + r * q_stride, q_stride, kt, S, scores + r * kBlock);
#endif
    for (; r < rows; ++r) {
        float* sr = scores + r * kBlock;
        std::fill(sr, sr + kBlock, 0.f);
        for (int c = 0; c < S; ++c) {
            const float qc = q[r * q_stride + c];
#pragma omp simd
            for (int t = 0; t < kBlock; ++t) sr[t] += qc * kt[c * kBlock + t];
        }
    }
}

#if defined(__AVX512F__)
// Two rows of a tile at once (they share each load of the values), S = 16 * N, the sums in registers:
// acc_i = acc_i * correction_i + sum over t < n of p_i[t] * v_t.
template <int N>
void value_pair(float* acc0, float* acc1, float c0, float c1, const float* p0, const float* p1, int n, const float* vf) {
    __m512 a[N], b[N];
    const __m512 cv0 = _mm512_set1_ps(c0), cv1 = _mm512_set1_ps(c1);
    for (int i = 0; i < N; ++i) {
        a[i] = _mm512_mul_ps(_mm512_loadu_ps(acc0 + 16 * i), cv0);
        b[i] = _mm512_mul_ps(_mm512_loadu_ps(acc1 + 16 * i), cv1);
    }
    for (int t = 0; t < n; ++t) {
        const __m512 w0 = _mm512_set1_ps(p0[t]), w1 = _mm512_set1_ps(p1[t]);
        for (int i = 0; i < N; ++i) {
            const __m512 v = _mm512_loadu_ps(vf + t * 16 * N + 16 * i);
            a[i] = _mm512_fmadd_ps(w0, v, a[i]);
            b[i] = _mm512_fmadd_ps(w1, v, b[i]);
        }
    }
    for (int i = 0; i < N; ++i) _mm512_storeu_ps(acc0 + 16 * i, a[i]), _mm512_storeu_ps(acc1 + 16 * i, b[i]);
}
#endif

// Rows r and r + 1 of a tile (or r alone: p1 == nullptr): acc = acc * correction + p . values[0:n).
// Weights past a row's own n are zero.
void tile_values(float* acc, int S, const float* corrections, const float* p, const float* p1, int n, const float* vf) {
    float* acc1 = acc + S;
#if defined(__AVX512F__)
    if (p1) {
        switch (S) {
            case 16: return value_pair<1>(acc, acc1, corrections[0], corrections[1], p, p1, n, vf);
            case 32: return value_pair<2>(acc, acc1, corrections[0], corrections[1], p, p1, n, vf);
            case 64: return value_pair<4>(acc, acc1, corrections[0], corrections[1], p, p1, n, vf);
            case 128: return value_pair<8>(acc, acc1, corrections[0], corrections[1], p, p1, n, vf);
        }
    }
#endif
    for (int k = 0; k < (p1 ? 2 : 1); ++k) {
        float* a = k ? acc1 : acc;
        const float* w = k ? p1 : p;
        for (int c = 0; c < S; ++c) a[c] *= corrections[k];
        for (int t = 0; t < n; ++t) axpy(a, w[t], vf + t * S, S);
    }
}

// A prompt's `count` queries (positions past..past+count-1) over their causal prefixes, one head. The
// head's blocks are dequantized once (keys transposed: kt[block][c * 32 + t]), then the queries go in
// tiles of 16 with an online softmax each: a tile's scores are a small matrix product per block.
void prompt_head(const Cache& cache, const int32_t* table, int past, int count, const float* q, size_t q_stride,
                 int hk, float scale, float* out, size_t out_stride, std::vector<float>& work) {
    const int S = cache.S, last = past + count, blocks = (last + kBlock - 1) / kBlock;
    const size_t block_floats = static_cast<size_t>(kBlock) * S;
    work.resize(2 * blocks * block_floats + static_cast<size_t>(kTile) * (S + 3 + kBlock));
    float* kt = work.data();
    float* vf = kt + blocks * block_floats;
    float* acc = vf + blocks * block_floats;
    float* m = acc + kTile * S;
    float* l = m + kTile;
    float* corrections = l + kTile;
    float* s = corrections + kTile;  // [kTile][kBlock]
    for (int j = 0; j < blocks; ++j) {
        const int valid = std::min(kBlock, last - j * kBlock);
        const uint8_t* kp = cache.key(table[j], hk);
        const float* ks = reinterpret_cast<const float*>(kp);
        const float* kz = ks + S;
        float* kj = kt + j * block_floats;
        for (int c = 0; c < S; ++c)
            for (int t = 0; t < kBlock; ++t) kj[c * kBlock + t] = t < valid ? (kp[8 * S + t * S + c] - kz[c]) * ks[c] : 0.f;
        const uint8_t* vp = cache.value(table[j], hk);
        for (int t = 0; t < valid; ++t) {
            const uint8_t* row = vp + t * cache.value_row();
            float scale_zp[2];
            std::memcpy(scale_zp, row, sizeof(scale_zp));
            for (int c = 0; c < S; ++c) vf[j * block_floats + t * S + c] = (row[8 + c] - scale_zp[1]) * scale_zp[0];
        }
    }
    for (int i = 0; i < count; i += kTile) {
        const int rows = std::min(kTile, count - i), first = past + i;
        std::fill(acc, acc + rows * S, 0.f);
        std::fill(m, m + rows, -INFINITY);
        std::fill(l, l + rows, 0.f);
        for (int j = 0; j * kBlock < first + rows; ++j) {
            const int valid = std::min(kBlock, last - j * kBlock);
            tile_scores(q + i * q_stride, q_stride, rows, kt + j * block_floats, S, s);
            int longest = 0;
            for (int r = 0; r < rows; ++r) {
                const int n = std::max(0, std::min(valid, first + r + 1 - j * kBlock));  // causal: keys up to the query's own
                corrections[r] = softmax_block(s + r * kBlock, n, scale, m[r], l[r]);
                longest = std::max(longest, n);
            }
            for (int r = 0; r < rows; r += 2) {
                const bool pair = r + 1 < rows;
                tile_values(acc + r * S, S, corrections + r, s + r * kBlock, pair ? s + (r + 1) * kBlock : nullptr,
                            longest, vf + j * block_floats);
            }
        }
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < S; ++c) out[(i + r) * out_stride + c] = acc[r * S + c] / l[r];
    }
}

// ---- the caches each request's operations read: bound from Python (attention.py) ----
//
// The operation takes one input (below), so the plugin infers its output shape without reading any
// input's data (an operation with several inputs it cannot infer costs ~0.1 ms a call in shape
// inference, 2.3 ms a step over 24 layers). The cache tensors are therefore not inputs: each request
// gets a slot here, and its PagedKVCache binds every layer's tensors to it whenever it binds them to
// the request. A slot number that was never bound, or a block index past what is bound, fails the
// call instead of touching memory.

struct Layer {
    uint8_t* keys = nullptr;
    uint8_t* values = nullptr;
    int64_t blocks = 0;
    int kv_heads = 0, S = 0;
};

std::mutex registry_lock;
std::vector<std::unique_ptr<std::vector<Layer>>> registry;  // slot -> layers (nullptr: closed)

const Layer* bound(int slot, int layer) {
    std::lock_guard<std::mutex> guard(registry_lock);
    if (slot < 0 || slot >= static_cast<int>(registry.size()) || !registry[slot]) return nullptr;
    auto& layers = *registry[slot];
    if (layer < 0 || layer >= static_cast<int>(layers.size()) || !layers[layer].keys) return nullptr;
    return &layers[layer];
}

// ---- the operation ----

// Input: one f32 vector, built in the graph by attention.py: R floats of bookkeeping (padded to whole
// heads), then every new token's q (heads * S each), then their k, then their v (kv heads * S each).
// The bookkeeping (exact below 2^24): R, slot, tokens, sequences, blocks in use, past_lens[sequences],
// subsequence_begins[sequences + 1], block_indices_begins[sequences + 1], block_indices[blocks].
// One vector, not rows of q|k|v: the graph then packs it with a single concatenation (two cost a
// 668-token prompt 47 ms). Output: the input's shape; the q part holds each token's attention output
// (the graph slices it out).
class PagedAttention : public ov::op::util::UnaryElementwiseArithmetic {
public:
    OPENVINO_OP("JanusPagedAttention", "janus_ov", ov::op::util::UnaryElementwiseArithmetic);

    PagedAttention() = default;
    PagedAttention(const ov::Output<ov::Node>& packed, int64_t layer, int64_t heads, float scale)
        : UnaryElementwiseArithmetic(packed), m_layer(layer), m_heads(heads), m_scale(scale) {
        constructor_validate_and_infer_types();
    }
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<PagedAttention>(args.at(0), m_layer, m_heads, m_scale);
    }
    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("layer", m_layer);
        visitor.on_attribute("heads", m_heads);
        visitor.on_attribute("scale", m_scale);
        return true;
    }
    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto shape = inputs[0].get_shape();
        outputs[0].set_shape(shape);
        const auto* in = inputs[0].data<const float>();
        const auto n = [&](size_t i) { return static_cast<int>(in[i]); };
        if (shape.size() != 1 || shape[0] < 5) return false;
        const int header = n(0), slot = n(1), tokens = n(2), sequences = n(3), used = n(4);
        const Layer* layer = bound(slot, static_cast<int>(m_layer));
        const int heads = static_cast<int>(m_heads);
        if (!layer || heads % layer->kv_heads || tokens < 0 || sequences < 0 || used < 0 ||
            header < 5 + 3 * sequences + 2 + used ||
            shape[0] != header + static_cast<size_t>(tokens) * (heads + 2 * layer->kv_heads) * layer->S)
            return false;
        std::vector<int32_t> book(3 * sequences + 2 + used);
        for (size_t i = 0; i < book.size(); ++i) book[i] = n(5 + i);
        const int32_t* past = book.data();
        const int32_t* begins = past + sequences;
        const int32_t* tables = begins + sequences + 1;
        const int32_t* blocks = tables + sequences + 1;
        for (int i = 0; i < used; ++i)
            if (blocks[i] < 0 || blocks[i] >= layer->blocks) return false;  // never outside the bound tensors
        for (int seq = 0; seq < sequences; ++seq) {
            const int count = begins[seq + 1] - begins[seq];
            const int needed = (past[seq] + count + kBlock - 1) / kBlock;
            if (count < 0 || begins[seq] < 0 || past[seq] < 0 || tables[seq] < 0 || tables[seq] + needed > tables[seq + 1] ||
                tables[seq + 1] > used || begins[seq + 1] > tokens)
                return false;
        }
        const Cache cache{layer->keys, layer->values, layer->kv_heads, layer->S};
        const int S = layer->S, kv_heads = layer->kv_heads, group = heads / kv_heads;
        const size_t q_width = static_cast<size_t>(heads) * S, kv_width = static_cast<size_t>(kv_heads) * S;
        const float* q = in + header;
        const float* k = q + tokens * q_width;
        const float* v = k + tokens * kv_width;
        float* out = outputs[0].data<float>() + header;

        // One work item per (sequence, run of kv heads): its new tokens into the cache, then attention for
        // the query heads that read those kv heads -- a decoding row's one query, or a prompt's in tiles.
        const int runs = head_runs(sequences, kv_heads);
        tbb::parallel_for(tbb::blocked_range<int>(0, sequences * runs), [&](const tbb::blocked_range<int>& range) {
            thread_local std::vector<float> scores, work;
            for (int item = range.begin(); item != range.end(); ++item) {
                const int seq = item / runs, run = item % runs, count = begins[seq + 1] - begins[seq];
                const int h0 = kv_heads * run / runs, h1 = kv_heads * (run + 1) / runs;
                if (count == 0) continue;
                const int32_t* table = blocks + tables[seq];
                const size_t at_q = begins[seq] * q_width, at_kv = begins[seq] * kv_width;
                for (int hk = h0; hk < h1; ++hk)
                    write_tokens(cache, table, past[seq], count, k + at_kv + hk * S, v + at_kv + hk * S, kv_width, hk,
                                 work);
                if (count == 1) {
                    decode_row(cache, table, past[seq] + 1, q + at_q, h0, h1, group, m_scale, out + at_q, scores, work);
                    continue;
                }
                for (int h = h0 * group; h < h1 * group; ++h)
                    prompt_head(cache, table, past[seq], count, q + at_q + h * S, q_width, h / group, m_scale,
                                out + at_q + h * S, q_width, work);
            }
        });
        return true;
    }

private:
    int64_t m_layer = 0, m_heads = 0;
    float m_scale = 1.f;
};

}  // namespace janus

extern "C" {

// A new slot for one request's caches; its number goes into the graph's bookkeeping.
int janus_attention_open() {
    std::lock_guard<std::mutex> guard(janus::registry_lock);
    for (size_t i = 0; i < janus::registry.size(); ++i)
        if (!janus::registry[i]) {
            janus::registry[i] = std::make_unique<std::vector<janus::Layer>>();
            return static_cast<int>(i);
        }
    janus::registry.push_back(std::make_unique<std::vector<janus::Layer>>());
    return static_cast<int>(janus::registry.size() - 1);
}

void janus_attention_close(int slot) {
    std::lock_guard<std::mutex> guard(janus::registry_lock);
    if (slot >= 0 && slot < static_cast<int>(janus::registry.size())) janus::registry[slot].reset();
}

// Layer `layer`'s cache tensors of a slot: keys [blocks, kv_heads, 8 + 32, S], values [blocks,
// kv_heads, 32, 8 + S] u8. Called whenever the request's tensors are bound, before it next runs.
int janus_attention_bind(int slot, int layer, void* keys, void* values, int64_t blocks, int kv_heads, int S) {
    std::lock_guard<std::mutex> guard(janus::registry_lock);
    if (slot < 0 || slot >= static_cast<int>(janus::registry.size()) || !janus::registry[slot] || layer < 0) return 1;
    auto& layers = *janus::registry[slot];
    if (static_cast<int>(layers.size()) <= layer) layers.resize(layer + 1);
    layers[layer] = {static_cast<uint8_t*>(keys), static_cast<uint8_t*>(values), blocks, kv_heads, S};
    return 0;
}

// For benchmarks/decode_attention.py: the decode kernel alone over one layer's cache, every row
// decoding one token (q [rows, heads * S]).
int janus_decode_attention(const float* q, int rows, int heads, int S, uint8_t* keys, uint8_t* values, int kv_heads,
                           const int32_t* past, const int32_t* blocks, const int32_t* tables, float scale, float* out) {
    const janus::Cache cache{keys, values, kv_heads, S};
    const int group = heads / kv_heads, runs = janus::head_runs(rows, kv_heads);
    tbb::parallel_for(tbb::blocked_range<int>(0, rows * runs), [&](const tbb::blocked_range<int>& range) {
        thread_local std::vector<float> scores, work;
        for (int item = range.begin(); item != range.end(); ++item) {
            const int row = item / runs, run = item % runs;
            const size_t at = static_cast<size_t>(row) * heads * S;
            janus::decode_row(cache, blocks + tables[row], past[row] + 1, q + at, kv_heads * run / runs,
                              kv_heads * (run + 1) / runs, group, scale, out + at, scores, work);
        }
    });
    return 0;
}
}
