// Fused SSIM for the fit's D-SSIM loss: forward and hand-written backward on the CPU.
//
// The same maths as pytorch_msssim.ssim (Wang et al. 2004; a separable Gaussian window applied
// as a "valid" correlation, K1 = 0.01, K2 = 0.03, data range 1), which the loss used before:
// per plane (image x channel) the mean over the valid window positions of
//
//   s = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_xx + s_yy + C2)),
//
// with mu, s from the window's moments E[x], E[y], E[x^2], E[y^2], E[xy]. In torch that is
// five grouped convolutions, each two passes, and some twenty full-size elementwise ops forward
// and twice that backward: about 370 ms for a step's 14 images at 256 px on one core, most of the
// step. Here each plane's five moments are filtered in two cache-resident passes and the per-pixel
// formula is fused with them.
//
// Backward: only x (the render) gets a gradient. With A1 = 2 mu_x mu_y + C1, B1 = mu_x^2 +
// mu_y^2 + C1, A2 = 2 s_xy + C2, B2 = s_xx + s_yy + C2, s = A1 A2 / (B1 B2) depends on x through
// the window moments m = E[x], q = E[x^2], r = E[xy]:
//   ds/dm = 2 mu_y (A2 - A1) / (B1 B2) + 2 mu_x (s / B2 - s / B1),  ds/dq = -s / B2,
//   ds/dr = 2 A1 / (B1 B2),
// and dL/dx = G^T(ds/dm) + 2 x G^T(ds/dq) + y G^T(ds/dr), where G^T scatters the valid
// correlation back (a full convolution with the symmetric window). The forward stores the three
// maps; the backward filters them back and combines.
//
// Planes are independent: they are spread over the kernels' pool (pool.hpp).

#include <algorithm>
#include <cstdint>
#include <vector>

#include "pool.hpp"

namespace {

constexpr double K1 = 0.01, K2 = 0.03;

// out[c] += w * in[c] for c in [0, n): the inner loop of every pass (vectorised by the compiler).
template <typename T>
inline void axpy(T* __restrict out, const T* __restrict in, T w, int n) {
    for (int c = 0; c < n; ++c) out[c] += w * in[c];
}

template <typename T>
double ssim_plane(const T* x, const T* y, int H, int W, const T* win, int k, T* dm, T* dq, T* dr) {
    const int Ho = H - k + 1, Wo = W - k + 1;
    const T C1 = T(K1 * K1), C2 = T(K2 * K2);
    // horizontal pass of the five moments: [5][H][Wo]
    std::vector<T> h(size_t(5) * H * Wo, T(0)), prod(size_t(3) * W);
    for (int r = 0; r < H; ++r) {
        const T* xr = x + size_t(r) * W;
        const T* yr = y + size_t(r) * W;
        T* xx = prod.data();
        T* yy = xx + W;
        T* xy = yy + W;
        for (int c = 0; c < W; ++c) {
            xx[c] = xr[c] * xr[c];
            yy[c] = yr[c] * yr[c];
            xy[c] = xr[c] * yr[c];
        }
        const T* src[5] = {xr, yr, xx, yy, xy};
        for (int m = 0; m < 5; ++m) {
            T* out = h.data() + (size_t(m) * H + r) * Wo;
            for (int j = 0; j < k; ++j) axpy(out, src[m] + j, win[j], Wo);
        }
    }
    // vertical pass, one output row at a time, then the fused per-pixel formula
    std::vector<T> v(size_t(5) * Wo);
    double sum = 0;
    for (int r = 0; r < Ho; ++r) {
        std::fill(v.begin(), v.end(), T(0));
        for (int m = 0; m < 5; ++m)
            for (int i = 0; i < k; ++i) axpy(v.data() + size_t(m) * Wo, h.data() + (size_t(m) * H + r + i) * Wo, win[i], Wo);
        const T *mx = v.data(), *my = mx + Wo, *ex2 = my + Wo, *ey2 = ex2 + Wo, *exy = ey2 + Wo;
        T* gm = dm + size_t(r) * Wo;
        T* gq = dq + size_t(r) * Wo;
        T* gr = dr + size_t(r) * Wo;
        double row = 0;
        for (int c = 0; c < Wo; ++c) {
            const T mux = mx[c], muy = my[c];
            const T sxx = ex2[c] - mux * mux, syy = ey2[c] - muy * muy, sxy = exy[c] - mux * muy;
            const T A1 = 2 * mux * muy + C1, B1 = mux * mux + muy * muy + C1;
            const T A2 = 2 * sxy + C2, B2 = sxx + syy + C2;
            const T D = T(1) / (B1 * B2);
            const T s = A1 * A2 * D;
            row += double(s);
            gm[c] = 2 * muy * (A2 - A1) * D + 2 * mux * (s / B2 - s / B1);
            gq[c] = -s / B2;
            gr[c] = 2 * A1 * D;
        }
        sum += row;
    }
    return sum / (double(Ho) * double(Wo));
}

template <typename T>
void ssim_plane_backward(const T* x, const T* y, int H, int W, const T* win, int k, const T* dm, const T* dq,
                         const T* dr, T g, T* gx) {
    const int Ho = H - k + 1, Wo = W - k + 1;
    const T* maps[3] = {dm, dq, dr};
    // vertical scatter of the three maps: [3][H][Wo]
    std::vector<T> u(size_t(3) * H * Wo, T(0));
    for (int m = 0; m < 3; ++m)
        for (int r = 0; r < Ho; ++r)
            for (int i = 0; i < k; ++i)
                axpy(u.data() + (size_t(m) * H + r + i) * Wo, maps[m] + size_t(r) * Wo, win[i], Wo);
    // horizontal scatter, row by row, then the chain rule through the moments
    std::vector<T> z(size_t(3) * W);
    for (int r = 0; r < H; ++r) {
        std::fill(z.begin(), z.end(), T(0));
        for (int m = 0; m < 3; ++m)
            for (int j = 0; j < k; ++j) axpy(z.data() + size_t(m) * W + j, u.data() + (size_t(m) * H + r) * Wo, win[j], Wo);
        const T* xr = x + size_t(r) * W;
        const T* yr = y + size_t(r) * W;
        T* out = gx + size_t(r) * W;
        const T *zm = z.data(), *zq = zm + W, *zr = zq + W;
        for (int c = 0; c < W; ++c) out[c] = g * (zm[c] + 2 * xr[c] * zq[c] + yr[c] * zr[c]);
    }
}

}  // namespace

extern "C" {

#define DS4D_SSIM_EXPORT(SUFFIX, T)                                                                   \
    /* x, y [P,H,W]; win [k]; out [P] mean SSIM per plane; dm, dq, dr [P,H-k+1,W-k+1] for backward */ \
    void ds4d_ssim_##SUFFIX(int64_t P, int H, int W, const T* x, const T* y, const T* win, int k,     \
                            T* out, T* dm, T* dq, T* dr, int nt) {                                    \
        const size_t plane = size_t(H) * W, oplane = size_t(H - k + 1) * (W - k + 1);                 \
        ds4d::parallel_for(P, nt, [&](int64_t p) {                                                    \
            out[p] = T(ssim_plane<T>(x + p * plane, y + p * plane, H, W, win, k, dm + p * oplane,     \
                                     dq + p * oplane, dr + p * oplane));                              \
        });                                                                                           \
    }                                                                                                 \
    /* g [P]: dLoss/d(mean SSIM of the plane); gx [P,H,W] */                                          \
    void ds4d_ssim_backward_##SUFFIX(int64_t P, int H, int W, const T* x, const T* y, const T* win,   \
                                     int k, const T* dm, const T* dq, const T* dr, const T* g, T* gx, \
                                     int nt) {                                                        \
        const size_t plane = size_t(H) * W, oplane = size_t(H - k + 1) * (W - k + 1);                 \
        const T scale = T(1) / T(oplane);                                                             \
        ds4d::parallel_for(P, nt, [&](int64_t p) {                                                    \
            ssim_plane_backward<T>(x + p * plane, y + p * plane, H, W, win, k, dm + p * oplane,       \
                                   dq + p * oplane, dr + p * oplane, g[p] * scale, gx + p * plane);   \
        });                                                                                           \
    }

DS4D_SSIM_EXPORT(f32, float)
DS4D_SSIM_EXPORT(f64, double)

}  // extern "C"
