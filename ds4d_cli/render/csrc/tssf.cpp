// TSSF's distance-aware fusion (ds4d_cli/model/tssf.py, mode "da"), forward and backward, fused.
//
// For one Gaussian n at one frame b, over the views v with soft visibility s_v (and features
// g_v of C channels):
//   gv_v = s_v g_v,   S = sum_v s_v + 1e-6,   mean = sum_v gv_v / S
//   anchor = s_0 gv_0 + (1 - s_0) mean                       (the input view's feature)
//   dist_v = mean_c |gv_v - anchor|,   scale = sum_v s_v dist_v / S + 1e-6
//   z_v = -dist_v / (scale tau), masked to -1e4 where s_v <= 1e-3
//   q_v = softmax(z)_v s_v,   w_v = q_v / max(sum q, 1e-6),   W_v = w_v s_v
//   out = 0.5 (anchor + sum_v W_v g_v)
// In torch these are some thirty elementwise passes over [B, V, N, C] forward and more
// backward: about 30-40 ms of a default step on one core, most of it in the backward. Here each
// (b, n) keeps its V x C values in registers. Gradients go to g and to log tau (tau = exp(log
// tau)); the visibility has none (it is measured, not learnt). |.| has gradient sign(.), 0 at 0,
// and the clamp of sum q passes gradient where sum q >= 1e-6, as in torch.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "pool.hpp"

namespace {

constexpr int kMaxViews = 16;
constexpr int kMaxChannels = 128;
constexpr int64_t kChunks = 8;  // fixed: tau's gradient is summed in the same order on any machine

template <typename T>
struct Fusion {
    T s[kMaxViews], dist[kMaxViews], sm[kMaxViews], q[kMaxViews], W[kMaxViews];
    T anchor[kMaxChannels], diff[kMaxViews][kMaxChannels];
    T S, scale, Q, Qc;

    // g: V rows of C (row stride `vstride`), vis: V values (stride `sstride`)
    void forward(const T* g, int64_t vstride, const T* vis, int64_t sstride, int V, int C, T tau) {
        S = 0;
        for (int v = 0; v < V; ++v) s[v] = vis[v * sstride], S += s[v];
        S += T(1e-6);
        T mean[kMaxChannels];
        for (int c = 0; c < C; ++c) mean[c] = 0;
        for (int v = 0; v < V; ++v)
            for (int c = 0; c < C; ++c) mean[c] += g[v * vstride + c] * s[v];
        for (int c = 0; c < C; ++c) mean[c] /= S;
        for (int c = 0; c < C; ++c) anchor[c] = s[0] * (g[c] * s[0]) + (1 - s[0]) * mean[c];
        T sd = 0;
        for (int v = 0; v < V; ++v) {
            T a = 0;
            for (int c = 0; c < C; ++c) {
                diff[v][c] = g[v * vstride + c] * s[v] - anchor[c];
                a += std::abs(diff[v][c]);
            }
            dist[v] = a / T(C);
            sd += dist[v] * s[v];
        }
        scale = sd / S + T(1e-6);
        T z[kMaxViews], zmax = -std::numeric_limits<T>::infinity();
        for (int v = 0; v < V; ++v) {
            z[v] = s[v] <= T(1e-3) ? T(-1e4) : -dist[v] / (scale * tau);
            zmax = std::max(zmax, z[v]);
        }
        T e = 0;
        for (int v = 0; v < V; ++v) sm[v] = std::exp(z[v] - zmax), e += sm[v];
        Q = 0;
        for (int v = 0; v < V; ++v) sm[v] /= e, q[v] = sm[v] * s[v], Q += q[v];
        Qc = std::max(Q, T(1e-6));
        for (int v = 0; v < V; ++v) W[v] = q[v] / Qc * s[v];
    }
};

template <typename T>
void tssf_forward(int64_t B, int V, int64_t N, int C, const T* g, const T* vis, T tau, T* out, int nt) {
    ds4d::parallel_range(B * N, 512, nt, [&](int64_t begin, int64_t end) {
        Fusion<T> f;
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / N, n = i % N;
            const T* gi = g + (b * V * N + n) * C;
            f.forward(gi, N * C, vis + n, N, V, C, tau);
            T* o = out + i * C;
            for (int c = 0; c < C; ++c) {
                T fused = 0;
                for (int v = 0; v < V; ++v) fused += f.W[v] * gi[v * N * C + c];
                o[c] = T(0.5) * (f.anchor[c] + fused);
            }
        }
    });
}

template <typename T>
void tssf_backward(int64_t B, int V, int64_t N, int C, const T* g, const T* vis, T tau, const T* grad_out,
                   T* grad_g, T* grad_log_tau, int nt) {
    const int64_t total = B * N;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kChunks, total / 512));
    const int64_t step = (total + chunks - 1) / chunks;
    std::vector<double> dtau(chunks, 0.0);
    ds4d::parallel_for(chunks, nt, [&](int64_t ci) {
        Fusion<T> f;
        double acc_tau = 0;
        const int64_t begin = ci * step, end = std::min(total, begin + step);
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / N, n = i % N;
            const int64_t vs = N * C;
            const T* gi = g + (b * V * N + n) * C;
            T* dg = grad_g + (b * V * N + n) * C;
            f.forward(gi, vs, vis + n, N, V, C, tau);
            const T* go = grad_out + i * C;
            const T* s = f.s;
            // out = 0.5 anchor + 0.5 sum_v W_v g_v
            T d_anchor[kMaxChannels], d_gv[kMaxViews][kMaxChannels], dw[kMaxViews];
            for (int c = 0; c < C; ++c) d_anchor[c] = T(0.5) * go[c];
            for (int v = 0; v < V; ++v) {
                T dW = 0;
                for (int c = 0; c < C; ++c) {
                    dW += T(0.5) * go[c] * gi[v * vs + c];
                    dg[v * vs + c] = f.W[v] * T(0.5) * go[c];
                    d_gv[v][c] = 0;
                }
                dw[v] = dW * s[v];
            }
            // w = q / max(Q, 1e-6)
            T dq[kMaxViews], wq = 0;
            for (int v = 0; v < V; ++v) wq += dw[v] * f.q[v];
            const bool pass = f.Q >= T(1e-6);
            for (int v = 0; v < V; ++v) dq[v] = dw[v] / f.Qc - (pass ? wq / (f.Qc * f.Qc) : T(0));
            // q = sm * s; softmax; mask
            T dsm[kMaxViews], dot = 0;
            for (int v = 0; v < V; ++v) dsm[v] = dq[v] * s[v], dot += f.sm[v] * dsm[v];
            T d_dist[kMaxViews], d_scale = 0, d_tau = 0;
            const T st = f.scale * tau;
            for (int v = 0; v < V; ++v) {
                const T dz = s[v] <= T(1e-3) ? T(0) : f.sm[v] * (dsm[v] - dot);
                d_dist[v] = -dz / st;
                d_scale += dz * f.dist[v] / (f.scale * st);
                d_tau += dz * f.dist[v] / (st * tau);
            }
            acc_tau += double(d_tau * tau);  // d/d log tau
            // scale = sum_v s_v dist_v / S + 1e-6; dist_v = mean_c |diff_vc|
            for (int v = 0; v < V; ++v) {
                const T dd = (d_dist[v] + d_scale * s[v] / f.S) / T(C);
                for (int c = 0; c < C; ++c) {
                    const T x = f.diff[v][c];
                    const T gd = dd * T((x > 0) - (x < 0));
                    d_gv[v][c] += gd;
                    d_anchor[c] -= gd;
                }
            }
            // anchor = s_0 gv_0 + (1 - s_0) mean; mean = sum_v gv_v / S; gv = s g
            for (int c = 0; c < C; ++c) {
                d_gv[0][c] += s[0] * d_anchor[c];
                const T dm = (1 - s[0]) * d_anchor[c] / f.S;
                for (int v = 0; v < V; ++v) d_gv[v][c] += dm;
            }
            for (int v = 0; v < V; ++v)
                for (int c = 0; c < C; ++c) dg[v * vs + c] += d_gv[v][c] * s[v];
        }
        dtau[ci] = acc_tau;
    });
    double t = 0;
    for (double d : dtau) t += d;
    *grad_log_tau = T(t);
}

}  // namespace

extern "C" {

#define DS4D_TSSF_EXPORT(SUFFIX, T)                                                                   \
    /* g [B,V,N,C], vis [V,N], out [B,N,C] */                                                         \
    void ds4d_tssf_da_##SUFFIX(int64_t B, int V, int64_t N, int C, const T* g, const T* vis, double tau, \
                               T* out, int nt) {                                                      \
        tssf_forward<T>(B, V, N, C, g, vis, T(tau), out, nt);                                         \
    }                                                                                                 \
    /* grad_out [B,N,C] -> grad_g [B,V,N,C] (overwritten), grad_log_tau [1] */                        \
    void ds4d_tssf_da_backward_##SUFFIX(int64_t B, int V, int64_t N, int C, const T* g, const T* vis, \
                                        double tau, const T* grad_out, T* grad_g, T* grad_log_tau,    \
                                        int nt) {                                                     \
        tssf_backward<T>(B, V, N, C, g, vis, T(tau), grad_out, grad_g, grad_log_tau, nt);             \
    }

DS4D_TSSF_EXPORT(f32, float)
DS4D_TSSF_EXPORT(f64, double)

}  // extern "C"
