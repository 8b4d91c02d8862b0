// Decode attention (one new query token per sequence) straight over the CPU plugin's PagedAttention
// u8 cache, to measure what a kernel of our own would save on multi-row steps (issue 21, item 3).
// Built and driven by benchmarks/decode_attention.py; not used by the app.
//
// Cache layout the plugin gives a layer (checked against its own output by the benchmark):
//   keys   [blocks, heads, 8 + 32, S] u8: per block and channel f32 scale[S], f32 zero point[S],
//          then 32 token rows of S u8 -- quantized by channel over the block;
//   values [blocks, heads, 32, 8 + S] u8: per token f32 scale, f32 zero point, then S u8.
// k = (u - zp) * scale, so q.k = sum((q*scale) * u) - sum(q*scale*zp): the dequantization folds
// into the query once per block, and the value side into one scalar per token.
//
// Why it is faster than the plugin's multi-sequence path: every (sequence, head) work item streams
// its blocks with the next block prefetched, four key rows per pass share the query registers, and
// the softmax's exponentials are vectorized.
#include <oneapi/tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int kBlock = 32;

struct Args {
    const float* q;
    int rows, heads, S;
    const uint8_t* keys;
    const uint8_t* values;
    const int32_t* past_lens;
    const int32_t* block_indices;
    const int32_t* block_begins;
    float scale;
    float* out;
};

void prefetch(const uint8_t* p, size_t bytes) {
#if defined(__AVX512F__)
    for (size_t i = 0; i < bytes; i += 64) _mm_prefetch(reinterpret_cast<const char*>(p) + i, _MM_HINT_T0);
#else
    for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i);
#endif
}

#if defined(__AVX512F__)
__m512 u8x16(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// exp(x) for x <= 0: 2^(x log2 e), the fraction by a degree-6 polynomial (rel. error ~2e-7).
__m512 exp16(__m512 x) {
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

// scores[t] = (qs . u_t - c0) * scale for the block's `valid` key rows (S a multiple of 16, <= 256).
void block_scores(const float* qs, float c0, const uint8_t* u, int valid, int S, float scale, float* scores) {
    const int n = S / 16;
    __m512 qv[16];
    for (int i = 0; i < n; ++i) qv[i] = _mm512_loadu_ps(qs + 16 * i);
    int t = 0;
    for (; t + 4 <= valid; t += 4) {
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
    for (; t < valid; ++t) {
        __m512 a0 = _mm512_setzero_ps();
        const uint8_t* r = u + static_cast<size_t>(t) * S;
        for (int i = 0; i < n; ++i) a0 = _mm512_fmadd_ps(qv[i], u8x16(r + 16 * i), a0);
        scores[t] = (_mm512_reduce_add_ps(a0) - c0) * scale;
    }
}

// scores -> exp(scores - max) in place over n entries; returns their sum.
float exp_sum(float* s, int n, float mx) {
    const __m512 mv = _mm512_set1_ps(mx);
    __m512 sum = _mm512_setzero_ps();
    int t = 0;
    for (; t + 16 <= n; t += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), mv));
        _mm512_storeu_ps(s + t, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (t < n) {
        const __mmask16 m = static_cast<__mmask16>((1u << (n - t)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + t), mv)));
        _mm512_mask_storeu_ps(s + t, m, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

// acc[0:S] += w * u[0:S]
void axpy_u8(float* acc, float w, const uint8_t* u, int S) {
    const __m512 wv = _mm512_set1_ps(w);
    for (int i = 0; i < S; i += 16)
        _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(wv, u8x16(u + i), _mm512_loadu_ps(acc + i)));
}
#else
void block_scores(const float* qs, float c0, const uint8_t* u, int valid, int S, float scale, float* scores) {
    for (int t = 0; t < valid; ++t) {
        const uint8_t* r = u + static_cast<size_t>(t) * S;
        float a = 0.f;
#pragma omp simd reduction(+ : a)
        for (int c = 0; c < S; ++c) a += qs[c] * static_cast<float>(r[c]);
        scores[t] = (a - c0) * scale;
    }
}

float exp_sum(float* s, int n, float mx) {
    float sum = 0.f;
    for (int t = 0; t < n; ++t) sum += (s[t] = std::exp(s[t] - mx));
    return sum;
}

void axpy_u8(float* acc, float w, const uint8_t* u, int S) {
#pragma omp simd
    for (int c = 0; c < S; ++c) acc[c] += w * static_cast<float>(u[c]);
}
#endif

void one_head(const Args& a, int row, int h, std::vector<float>& scores, std::vector<float>& work) {
    const int S = a.S, kv = a.past_lens[row] + 1, blocks = (kv + kBlock - 1) / kBlock;
    const size_t key_block = static_cast<size_t>(kBlock + 8) * S, value_row = 8 + S,
                 value_block = static_cast<size_t>(kBlock) * value_row;
    const int32_t* table = a.block_indices + a.block_begins[row];
    const float* q = a.q + (static_cast<size_t>(row) * a.heads + h) * S;
    float* qs = work.data();
    float* acc = work.data() + S;
    scores.resize(static_cast<size_t>(blocks) * kBlock);
    float mx = -INFINITY;
    for (int j = 0; j < blocks; ++j) {
        const uint8_t* p = a.keys + (static_cast<size_t>(table[j]) * a.heads + h) * key_block;
        if (j + 1 < blocks) prefetch(a.keys + (static_cast<size_t>(table[j + 1]) * a.heads + h) * key_block, key_block);
        const float* ks = reinterpret_cast<const float*>(p);
        const float* kz = ks + S;
        float c0 = 0.f;
        for (int c = 0; c < S; ++c) {
            qs[c] = q[c] * ks[c];
            c0 += qs[c] * kz[c];
        }
        const int valid = std::min(kBlock, kv - j * kBlock);
        block_scores(qs, c0, p + 8 * S, valid, S, a.scale, scores.data() + j * kBlock);
        for (int t = 0; t < valid; ++t) mx = std::max(mx, scores[j * kBlock + t]);
    }
    const float inv = 1.f / exp_sum(scores.data(), kv, mx);
    std::fill(acc, acc + S, 0.f);
    float zero = 0.f;  // sum of w_t * zp_t, taken off every channel at the end
    for (int j = 0; j < blocks; ++j) {
        const uint8_t* p = a.values + (static_cast<size_t>(table[j]) * a.heads + h) * value_block;
        if (j + 1 < blocks)
            prefetch(a.values + (static_cast<size_t>(table[j + 1]) * a.heads + h) * value_block, value_block);
        const int valid = std::min(kBlock, kv - j * kBlock);
        for (int t = 0; t < valid; ++t) {
            const uint8_t* r = p + t * value_row;
            float sz[2];
            std::memcpy(sz, r, sizeof(sz));
            const float w = scores[j * kBlock + t] * inv * sz[0];
            zero += w * sz[1];
            axpy_u8(acc, w, r + 8, S);
        }
    }
    float* out = a.out + (static_cast<size_t>(row) * a.heads + h) * S;
    for (int c = 0; c < S; ++c) out[c] = acc[c] - zero;
}

}  // namespace

extern "C" {

const char* janus_decode_attention_isa() {
#if defined(__AVX512F__)
    return "avx512";
#else
    return "portable";
#endif
}

// q: [rows, heads * S] f32, one token per row; out: the same shape. Returns 0, or 1 for a shape the
// kernel does not take (the AVX-512 path needs S a multiple of 16, at most 256).
int janus_decode_attention(const float* q, int rows, int heads, int S, const uint8_t* keys, const uint8_t* values,
                           const int32_t* past_lens, const int32_t* block_indices, const int32_t* block_begins,
                           float scale, float* out) {
#if defined(__AVX512F__)
    if (S % 16 != 0 || S > 256) return 1;
#endif
    const Args a{q, rows, heads, S, keys, values, past_lens, block_indices, block_begins, scale, out};
    tbb::parallel_for(tbb::blocked_range<int>(0, rows * heads), [&](const tbb::blocked_range<int>& range) {
        std::vector<float> scores, work(2 * static_cast<size_t>(S));
        for (int item = range.begin(); item != range.end(); ++item) one_head(a, item / heads, item % heads, scores, work);
    }, tbb::static_partitioner());
    return 0;
}
}
