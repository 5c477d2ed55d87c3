// The HexPlane feature field of the deformation (ds4d_cli/model/hexplane.py), forward and
// backward, fused on the CPU.
//
// Per level l (spatial resolution r, T time rows, C channels) a point p in [-1,1]^3 at time
// t in [-1,1] gets
//
//   f[c] = s_xy[c] s_xz[c] s_yz[c] * tau_x[c] tau_y[c] tau_z[c],
//
// each factor a bilinear sample (align_corners, as torch's grid_sample) of one plane: the space
// planes [r, r, C] at (p_i, p_j), the time planes [T, r, C] at (p_k, t). Levels are
// concatenated along the channels. In torch that is twelve grid_sample calls whose backward
// runs on one thread and is slow for its work (a step's HexPlane took about 58 ms forward and
// backward on one core at 6k Gaussians x 2 frames, most of it in grid_sample's backward, for
// well under a million multiply-adds). Here each point's samples stay in registers and the
// backward recomputes them.
//
// Backward: only the planes get gradients (the deformation samples at detached centres and
// fixed times). Each chunk of points scatters into its own copy of the plane gradients, and
// the copies are summed at the end in a fixed order: the result does not depend on the thread
// count or on which thread ran which chunk.
//
// Layout: all planes of all levels channels-last in one flat buffer; offsets[l * 6 + k] is the
// start of level l's plane k (k = 0..2 space xy, xz, yz; k = 3..5 time x, y, z).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pool.hpp"

namespace {

constexpr int kMaxChannels = 64;
constexpr int64_t kChunks = 4;
constexpr int kSpace[3][2] = {{0, 1}, {0, 2}, {1, 2}};

// Bilinear corner index and weight along one axis of `size` samples (align_corners): the lower
// corner i0 in [0, size - 2] and the weight w of the upper one.
template <typename T>
inline void axis(T g, int size, int& i0, T& w) {
    const T f = (g + T(1)) * T(0.5) * T(size - 1);
    int i = static_cast<int>(std::floor(f));
    i = std::min(std::max(i, 0), size - 2);
    i0 = i;
    w = f - T(i);
}

struct Corner {
    int64_t base;  // element offset of the (y0, x0) corner in the plane
    int64_t row;   // elements per plane row (width * C)
};

template <typename T>
inline void sample(const T* plane, const Corner& k, int C, T wx, T wy, T* out) {
    const T* a = plane + k.base;
    const T* b = a + k.row;
    const T w00 = (1 - wx) * (1 - wy), w01 = wx * (1 - wy), w10 = (1 - wx) * wy, w11 = wx * wy;
    for (int c = 0; c < C; ++c) out[c] = w00 * a[c] + w01 * a[C + c] + w10 * b[c] + w11 * b[C + c];
}

template <typename T>
inline void scatter(T* plane, const Corner& k, int C, T wx, T wy, const T* g) {
    T* a = plane + k.base;
    T* b = a + k.row;
    const T w00 = (1 - wx) * (1 - wy), w01 = wx * (1 - wy), w10 = (1 - wx) * wy, w11 = wx * wy;
    for (int c = 0; c < C; ++c) {
        a[c] += w00 * g[c];
        a[C + c] += w01 * g[c];
        b[c] += w10 * g[c];
        b[C + c] += w11 * g[c];
    }
}

// Where one point samples the three space planes of a level (r x r).
template <typename T>
struct SpaceAt {
    Corner k[3];
    T wx[3], wy[3];
    SpaceAt(const T* p, int r, int C, const int64_t* off) {
        for (int s = 0; s < 3; ++s) {
            int x0, y0;
            axis<T>(p[kSpace[s][0]], r, x0, wx[s]);
            axis<T>(p[kSpace[s][1]], r, y0, wy[s]);
            k[s] = {off[s] + (int64_t(y0) * r + x0) * C, int64_t(r) * C};
        }
    }
};

// Where one point at one time samples the three time planes of a level (T rows x r).
template <typename T>
struct TimeAt {
    Corner k[3];
    T wx[3], wy;
    TimeAt(const T* p, int y0, T wy_, int r, int C, const int64_t* off) : wy(wy_) {
        for (int s = 0; s < 3; ++s) {
            int x0;
            axis<T>(p[s], r, x0, wx[s]);
            k[s] = {off[3 + s] + (int64_t(y0) * r + x0) * C, int64_t(r) * C};
        }
    }
};

// The three space samples s[k] of a point at one level and their product S; where they were taken.
template <typename T>
inline SpaceAt<T> sample_space(const T* planes, const T* pn, int r, int C, const int64_t* off,
                               T (*s)[kMaxChannels], T* S) {
    SpaceAt<T> sp(pn, r, C, off);
    for (int k = 0; k < 3; ++k) sample(planes, sp.k[k], C, sp.wx[k], sp.wy[k], s[k]);
    for (int c = 0; c < C; ++c) S[c] = s[0][c] * s[1][c] * s[2][c];
    return sp;
}

template <typename T>
void forward(int64_t N, int64_t B, int C, int L, const int* res, int Tn, const T* planes,
             const int64_t* offsets, const T* p, const T* tt, T* out, int nt) {
    std::vector<int> ty0(B);
    std::vector<T> twy(B);
    for (int64_t b = 0; b < B; ++b) axis<T>(tt[b], Tn, ty0[b], twy[b]);
    const int64_t D = int64_t(L) * C;
    ds4d::parallel_range(N, 256, nt, [&](int64_t begin, int64_t end) {
        T s[3][kMaxChannels], S[kMaxChannels], tau[3][kMaxChannels];
        for (int64_t n = begin; n < end; ++n) {
            const T* pn = p + 3 * n;
            for (int l = 0; l < L; ++l) {
                const int64_t* off = offsets + 6 * l;
                const SpaceAt<T> sp = sample_space(planes, pn, res[l], C, off, s, S);
                for (int64_t b = 0; b < B; ++b) {
                    TimeAt<T> tm(pn, ty0[b], twy[b], res[l], C, off);
                    for (int k = 0; k < 3; ++k) sample(planes, tm.k[k], C, tm.wx[k], tm.wy, tau[k]);
                    T* o = out + (b * N + n) * D + int64_t(l) * C;
                    for (int c = 0; c < C; ++c) o[c] = S[c] * (tau[0][c] * tau[1][c] * tau[2][c]);
                }
            }
        }
    });
}

template <typename T>
void backward(int64_t N, int64_t B, int C, int L, const int* res, int Tn, const T* planes,
              const int64_t* offsets, int64_t total, const T* p, const T* tt, const T* grad_out,
              T* grad_planes, int nt) {
    std::vector<int> ty0(B);
    std::vector<T> twy(B);
    for (int64_t b = 0; b < B; ++b) axis<T>(tt[b], Tn, ty0[b], twy[b]);
    const int64_t D = int64_t(L) * C;
    // a fixed number of chunks (not the thread count): the same sums in the same order on any
    // machine, so a fit is reproducible whatever DS4D_RENDER_THREADS says
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kChunks, (N + 2047) / 2048));
    const int64_t step = (N + chunks - 1) / chunks;
    // chunk 0 scatters straight into the output; the others into private copies
    std::vector<std::vector<T>> copies(chunks - 1);
    std::memset(grad_planes, 0, sizeof(T) * total);
    ds4d::parallel_for(chunks, nt, [&](int64_t ci) {
        T* g_planes = grad_planes;
        if (ci > 0) {
            copies[ci - 1].assign(total, T(0));
            g_planes = copies[ci - 1].data();
        }
        T s[3][kMaxChannels], S[kMaxChannels], tau[3][kMaxChannels], G[kMaxChannels], tmp[kMaxChannels];
        const int64_t begin = ci * step, end = std::min(N, begin + step);
        for (int64_t n = begin; n < end; ++n) {
            const T* pn = p + 3 * n;
            for (int l = 0; l < L; ++l) {
                const int64_t* off = offsets + 6 * l;
                const SpaceAt<T> sp = sample_space(planes, pn, res[l], C, off, s, S);
                for (int c = 0; c < C; ++c) G[c] = 0;
                for (int64_t b = 0; b < B; ++b) {
                    TimeAt<T> tm(pn, ty0[b], twy[b], res[l], C, off);
                    for (int k = 0; k < 3; ++k) sample(planes, tm.k[k], C, tm.wx[k], tm.wy, tau[k]);
                    const T* g = grad_out + (b * N + n) * D + int64_t(l) * C;
                    // time factor k: g * S * (the other two time factors)
                    for (int k = 0; k < 3; ++k) {
                        const int a = (k + 1) % 3, e = (k + 2) % 3;
                        for (int c = 0; c < C; ++c)
                            tmp[c] = g[c] * S[c] * (tau[a][c] * tau[e][c]);
                        scatter(g_planes, tm.k[k], C, tm.wx[k], tm.wy, tmp);
                    }
                    for (int c = 0; c < C; ++c) G[c] += g[c] * (tau[0][c] * tau[1][c] * tau[2][c]);
                }
                for (int k = 0; k < 3; ++k) {
                    const int a = (k + 1) % 3, e = (k + 2) % 3;
                    for (int c = 0; c < C; ++c) tmp[c] = G[c] * (s[a][c] * s[e][c]);
                    scatter(g_planes, sp.k[k], C, sp.wx[k], sp.wy[k], tmp);
                }
            }
        }
    });
    if (chunks > 1) {
        ds4d::parallel_range(total, 4096, nt, [&](int64_t begin, int64_t end) {
            for (const auto& copy : copies)
                for (int64_t i = begin; i < end; ++i) grad_planes[i] += copy[i];
        });
    }
}

}  // namespace

extern "C" {

#define DS4D_HEXPLANE_EXPORT(SUFFIX, T)                                                               \
    /* p [N,3] and tt [B] in [-1,1]; planes flat channels-last at offsets [L*6]; out [B,N,L*C] */    \
    void ds4d_hexplane_##SUFFIX(int64_t N, int64_t B, int C, int L, const int* res, int Tn,           \
                                const T* planes, const int64_t* offsets, const T* p, const T* tt,     \
                                T* out, int nt) {                                                     \
        forward<T>(N, B, C, L, res, Tn, planes, offsets, p, tt, out, nt);                            \
    }                                                                                                 \
    /* grad_planes: the same layout as planes (total elements), overwritten */                        \
    void ds4d_hexplane_backward_##SUFFIX(int64_t N, int64_t B, int C, int L, const int* res, int Tn,  \
                                         const T* planes, const int64_t* offsets, int64_t total,      \
                                         const T* p, const T* tt, const T* grad_out, T* grad_planes, \
                                         int nt) {                                                    \
        backward<T>(N, B, C, L, res, Tn, planes, offsets, total, p, tt, grad_out, grad_planes, nt);  \
    }

DS4D_HEXPLANE_EXPORT(f32, float)
DS4D_HEXPLANE_EXPORT(f64, double)

}  // extern "C"
