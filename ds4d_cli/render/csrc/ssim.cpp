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
#include <cmath>
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


// The fit's whole image loss for a batch of renders, fused (ds4d_cli/model/losses.py,
// render_losses): the render (premultiplied rgb [C,H,W,3] and alpha [C,H,W]) and the target
// (straight rgba [C,H,W,4]) are composited over the background bg [3], then per image
//   l1 = mean over pixels and channels of w |x - y|,  mask = mean over pixels of w |a - a_t|,
//   ssim = mean over the 3 channel planes of ssim_plane(x, y),
// with w the optional per-pixel weight [C,H,W]. The render's pixels are rs values apart (3, or 4
// when it is the kernel's composited rgb + depth, read in place: no copy of the rgb slice). In torch the compositing, weighting and the
// channels-first copies for SSIM were some twenty full-size passes forward and backward (about
// a sixth of a default step); here each image is read once and the SSIM planes are filtered in
// cache. xs, ys [C,3,H,W] keep the composited planes and dm/dq/dr the SSIM maps for backward.
template <typename T>
void render_losses(int64_t Cn, int H, int W, const T* rgb, const T* alpha, const T* target, const T* bg,
                   const T* pw, const T* win, int k, T* l1, T* mask, T* ssim, T* xs, T* ys, T* dm, T* dq, T* dr,
                   int rs, int nt) {
    const size_t npix = size_t(H) * W, oplane = size_t(H - k + 1) * (W - k + 1);
    ds4d::parallel_for(Cn, nt, [&](int64_t c) {
        const T* r = rgb + c * npix * rs;
        const T* a = alpha + c * npix;
        const T* t = target + c * npix * 4;
        const T* w = pw ? pw + c * npix : nullptr;
        T* x = xs + c * npix * 3;
        T* y = ys + c * npix * 3;
        double sl1 = 0, sm = 0;
        for (size_t i = 0; i < npix; ++i) {
            const T wi = w ? w[i] : T(1);
            const T ta = t[4 * i + 3];
            T e = 0;
            for (int ch = 0; ch < 3; ++ch) {
                const T xv = r[rs * i + ch] + (1 - a[i]) * bg[ch];
                const T yv = t[4 * i + ch] * ta + bg[ch] * (1 - ta);
                x[ch * npix + i] = xv;
                y[ch * npix + i] = yv;
                e += std::abs(xv - yv);
            }
            sl1 += double(wi * e);
            sm += double(wi * std::abs(a[i] - ta));
        }
        l1[c] = T(sl1 / (3.0 * double(npix)));
        mask[c] = T(sm / double(npix));
    });
    std::vector<double> planes(size_t(Cn) * 3);
    ds4d::parallel_for(Cn * 3, nt, [&](int64_t p) {
        planes[p] = ssim_plane<T>(xs + p * npix, ys + p * npix, H, W, win, k, dm + p * oplane, dq + p * oplane,
                                  dr + p * oplane);
    });
    for (int64_t c = 0; c < Cn; ++c) ssim[c] = T((planes[3 * c] + planes[3 * c + 1] + planes[3 * c + 2]) / 3.0);
}

// Gradients of render_losses to the render: g_l1, g_mask, g_ssim [C] are dLoss/d(each image's
// l1, mask, ssim); grad_rgb [C,H,W,rs] (channels past the third get 0), grad_alpha [C,H,W]; gx
// [C,3,H,W] is scratch. |.| has
// gradient sign(.), 0 at 0 (as torch).
template <typename T>
void render_losses_backward(int64_t Cn, int H, int W, const T* alpha, const T* target, const T* bg, const T* pw,
                            const T* win, int k, const T* xs, const T* ys, const T* dm, const T* dq, const T* dr,
                            const T* g_l1, const T* g_mask, const T* g_ssim, T* grad_rgb, T* grad_alpha, T* gx,
                            int rs, int nt) {
    const size_t npix = size_t(H) * W, oplane = size_t(H - k + 1) * (W - k + 1);
    ds4d::parallel_for(Cn * 3, nt, [&](int64_t p) {
        const T g = g_ssim[p / 3] / T(3) / T(oplane);
        ssim_plane_backward<T>(xs + p * npix, ys + p * npix, H, W, win, k, dm + p * oplane, dq + p * oplane,
                               dr + p * oplane, g, gx + p * npix);
    });
    auto sign = [](T v) { return T((v > 0) - (v < 0)); };
    ds4d::parallel_for(Cn, nt, [&](int64_t c) {
        const T* a = alpha + c * npix;
        const T* t = target + c * npix * 4;
        const T* w = pw ? pw + c * npix : nullptr;
        const T* x = xs + c * npix * 3;
        const T* y = ys + c * npix * 3;
        const T* gs = gx + c * npix * 3;
        T* gr = grad_rgb + c * npix * rs;
        T* ga = grad_alpha + c * npix;
        const T kl1 = g_l1[c] / T(3 * npix), km = g_mask[c] / T(npix);
        for (size_t i = 0; i < npix; ++i) {
            const T wi = w ? w[i] : T(1);
            T da = km * wi * sign(a[i] - t[4 * i + 3]);
            for (int ch = 0; ch < 3; ++ch) {
                const size_t j = ch * npix + i;
                const T g = gs[j] + kl1 * wi * sign(x[j] - y[j]);
                gr[rs * i + ch] = g;
                da -= bg[ch] * g;
            }
            for (int ch = 3; ch < rs; ++ch) gr[rs * i + ch] = T(0);
            ga[i] = da;
        }
    });
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

#define DS4D_LOSS_EXPORT(SUFFIX, T)                                                                   \
    void ds4d_render_losses_##SUFFIX(int64_t Cn, int H, int W, const T* rgb, const T* alpha,         \
                                     const T* target, const T* bg, const T* pw, const T* win, int k,  \
                                     T* l1, T* mask, T* ssim, T* xs, T* ys, T* dm, T* dq, T* dr,      \
                                     int rs, int nt) {                                                \
        render_losses<T>(Cn, H, W, rgb, alpha, target, bg, pw, win, k, l1, mask, ssim, xs, ys, dm, dq, \
                         dr, rs, nt);                                                                 \
    }                                                                                                 \
    void ds4d_render_losses_backward_##SUFFIX(int64_t Cn, int H, int W, const T* alpha,              \
                                              const T* target, const T* bg, const T* pw,              \
                                              const T* win, int k, const T* xs, const T* ys,          \
                                              const T* dm, const T* dq, const T* dr, const T* g_l1,   \
                                              const T* g_mask, const T* g_ssim, T* grad_rgb,          \
                                              T* grad_alpha, T* gx, int rs, int nt) {                 \
        render_losses_backward<T>(Cn, H, W, alpha, target, bg, pw, win, k, xs, ys, dm, dq, dr, g_l1,   \
                                  g_mask, g_ssim, grad_rgb, grad_alpha, gx, rs, nt);                  \
    }

DS4D_LOSS_EXPORT(f32, float)
DS4D_LOSS_EXPORT(f64, double)

}  // extern "C"
