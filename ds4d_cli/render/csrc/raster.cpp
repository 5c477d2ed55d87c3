// Tiled front-to-back Gaussian compositor for the CPU (forward and hand-written backward).
//
// Plain C++17 with a C ABI (loaded through ctypes): it needs only g++, no torch headers, so it
// builds in seconds on a fresh machine. Work items are (camera, 16x16 tile) pairs handed out
// to std::threads through an atomic counter, so busy and empty tiles balance themselves.
//
// Per pixel (centre at +0.5), for the tile's Gaussians in depth order:
//   sigma = a dx^2/2 + b dx dy + c dy^2/2,  alpha = min(0.999, o exp(-sigma)),
//   skipped when sigma < 0 or alpha < 1/255; the ray stops (exclusive) when T(1-alpha) <= 1e-4.
// The backward pass walks each pixel's list back to front, recovering T by division (as the
// gsplat CUDA kernels do) instead of storing per-sample state, and writes gradients to a
// per-intersection buffer (each intersection belongs to one tile: no races, deterministic);
// the caller sums them per Gaussian.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int TILE = 16;
constexpr int TILE_PIX = TILE * TILE;

template <typename F>
void parallel_for(int64_t n_items, int n_threads, F&& fn) {
    if (n_threads <= 1 || n_items <= 1) {
        for (int64_t i = 0; i < n_items; ++i) fn(i);
        return;
    }
    std::atomic<int64_t> next{0};
    auto worker = [&]() {
        for (int64_t i = next.fetch_add(1); i < n_items; i = next.fetch_add(1)) fn(i);
    };
    int n = static_cast<int>(std::min<int64_t>(n_threads, n_items));
    std::vector<std::thread> pool;
    pool.reserve(n - 1);
    for (int t = 0; t < n - 1; ++t) pool.emplace_back(worker);
    worker();
    for (auto& th : pool) th.join();
}

struct TileRect {
    int x0, x1, y0, y1;  // tile index range, exclusive upper bounds
};

template <typename T>
inline TileRect tile_rect(T mx, T my, int32_t rx, int32_t ry, int tiles_x, int tiles_y) {
    TileRect r;
    r.x0 = std::min(std::max(static_cast<int>(std::floor((mx - rx) / TILE)), 0), tiles_x);
    r.x1 = std::min(std::max(static_cast<int>(std::ceil((mx + rx) / TILE)), 0), tiles_x);
    r.y0 = std::min(std::max(static_cast<int>(std::floor((my - ry) / TILE)), 0), tiles_y);
    r.y1 = std::min(std::max(static_cast<int>(std::ceil((my + ry) / TILE)), 0), tiles_y);
    return r;
}

// Pixel range [lo, hi) inside [tile_lo, tile_hi) whose centres lie within [m - r, m + r].
template <typename T>
inline void pixel_span(T m, int32_t r, int tile_lo, int tile_hi, int& lo, int& hi) {
    T a = std::ceil(m - r - T(0.5));
    T b = std::floor(m + r - T(0.5)) + T(1);
    lo = std::max(tile_lo, static_cast<int>(std::max(a, T(tile_lo - 1))));
    hi = std::min(tile_hi, static_cast<int>(std::min(b, T(tile_hi + 1))));
}

// exp(-s) for s >= 0. float: a branch-free Cephes-style polynomial (about 1 ulp) that the
// compiler vectorises; double: std::exp. Forward and backward call the same code, so they
// make identical threshold decisions.
inline float exp_neg(float s) {
    float x = -s;
    x = x < -87.0f ? -87.0f : x;
    // round to nearest via the 1.5 * 2^23 trick (SSE2-vectorisable, unlike floor)
    const float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t e = static_cast<int32_t>(fn) + 127;
    float scale;
    const int32_t bits = e << 23;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}
inline double exp_neg(double s) { return std::exp(-s); }

// Columns [lo, hi) of row dy (pixel-centre offset from the mean) where
// a dx^2/2 + b dx dy + c dy^2/2 <= thr can hold, intersected with [x_lo, x_hi).
// Pixels outside have alpha < 1/255 exactly (thr = log(255 o)); a small margin absorbs
// rounding, and pixels let in by it are rejected by the alpha test as usual.
template <typename T>
inline bool row_span(T mx, T dy, T a, T b, T c, T thr, int x_lo, int x_hi, int& lo, int& hi) {
    const T disc = b * b * dy * dy - a * (c * dy * dy - T(2) * thr);
    if (!(disc >= T(0)) || !(a > T(0))) {
        lo = hi = x_lo;
        return false;
    }
    const T root = std::sqrt(disc);
    const T margin = T(1e-3) + T(1e-4) * std::fabs(mx);
    const T left = mx + (-b * dy - root) / a - margin;
    const T right = mx + (-b * dy + root) / a + margin;
    const T first = std::ceil(left - T(0.5));
    const T last = std::floor(right - T(0.5));
    lo = static_cast<int>(std::max(first, T(x_lo)));
    hi = static_cast<int>(std::min(last + T(1), T(x_hi)));
    return hi > lo;
}

// Fills sig[x - xs] and vis[x - xs] = exp(-sig) for columns [xs, xe) of one row; sig < 0
// (numerically non-positive-definite footprints) gets vis = 0 so the caller skips it.
template <typename T>
inline void eval_row(int xs, int xe, T mx, T dy, T a, T b, T c, T* sig, T* vis) {
    const int n = xe - xs;
    const T base = T(0.5) * c * dy * dy;
    const T bdy = b * dy;
    for (int t = 0; t < n; ++t) {
        const T dx = (T(xs + t) + T(0.5)) - mx;
        const T sg = T(0.5) * a * dx * dx + bdy * dx + base;
        sig[t] = sg;
        const T e = exp_neg(sg > T(0) ? sg : T(0));
        vis[t] = sg >= T(0) ? e : T(0);
    }
}

template <typename T>
void count_tiles(int64_t C, int64_t N, int W, int H, const T* means2d, const int32_t* radii,
                 int32_t* counts) {
    const int tx = (W + TILE - 1) / TILE, ty = (H + TILE - 1) / TILE;
    for (int64_t c = 0; c < C; ++c) {
        int32_t* cnt = counts + c * tx * ty;
        for (int64_t g = 0; g < N; ++g) {
            const int64_t k = c * N + g;
            const int32_t rx = radii[2 * k], ry = radii[2 * k + 1];
            if (rx <= 0 || ry <= 0) continue;
            TileRect r = tile_rect(means2d[2 * k], means2d[2 * k + 1], rx, ry, tx, ty);
            for (int y = r.y0; y < r.y1; ++y)
                for (int x = r.x0; x < r.x1; ++x) cnt[y * tx + x] += 1;
        }
    }
}

// order: [C,N] Gaussian indices per camera, front to back. offsets: [C*tiles+1].
// ids receives flat (c*N + g) indices, each tile's run in depth order.
template <typename T>
void fill_tiles(int64_t C, int64_t N, int W, int H, const T* means2d, const int32_t* radii,
                const int64_t* order, const int64_t* offsets, int64_t* ids, int n_threads) {
    const int tx = (W + TILE - 1) / TILE, ty = (H + TILE - 1) / TILE;
    const int64_t nt = static_cast<int64_t>(tx) * ty;
    parallel_for(C, n_threads, [&](int64_t c) {
        std::vector<int64_t> cursor(offsets + c * nt, offsets + (c + 1) * nt);
        for (int64_t j = 0; j < N; ++j) {
            const int64_t g = order[c * N + j];
            const int64_t k = c * N + g;
            const int32_t rx = radii[2 * k], ry = radii[2 * k + 1];
            if (rx <= 0 || ry <= 0) continue;
            TileRect r = tile_rect(means2d[2 * k], means2d[2 * k + 1], rx, ry, tx, ty);
            for (int y = r.y0; y < r.y1; ++y)
                for (int x = r.x0; x < r.x1; ++x) ids[cursor[y * tx + x]++] = k;
        }
    });
}

template <typename T>
void forward(int64_t C, int64_t N, int D, int W, int H, const T* means2d, const T* conics,
             const T* feats, const T* opac, const int32_t* radii, const int64_t* offsets,
             const int64_t* ids, T* out_img, T* out_T, int32_t* out_last, int n_threads) {
    const int tx = (W + TILE - 1) / TILE, ty = (H + TILE - 1) / TILE;
    const int64_t nt = static_cast<int64_t>(tx) * ty;
    const T alpha_min = T(1.0 / 255.0), alpha_max = T(0.999), t_min = T(1e-4);
    parallel_for(C * nt, n_threads, [&](int64_t item) {
        const int64_t c = item / nt;
        const int tile = static_cast<int>(item % nt);
        const int px0 = (tile % tx) * TILE, py0 = (tile / tx) * TILE;
        const int px1 = std::min(px0 + TILE, W), py1 = std::min(py0 + TILE, H);
        T Tr[TILE_PIX];
        int32_t last[TILE_PIX];
        bool done[TILE_PIX];
        std::vector<T> acc(static_cast<size_t>(TILE_PIX) * D, T(0));
        for (int i = 0; i < TILE_PIX; ++i) { Tr[i] = T(1); last[i] = 0; done[i] = false; }
        int active = (px1 - px0) * (py1 - py0);
        const int64_t start = offsets[item], end = offsets[item + 1];
        for (int64_t j = start; j < end && active > 0; ++j) {
            const int64_t k = ids[j];
            const T mx = means2d[2 * k], my = means2d[2 * k + 1];
            const T ca = conics[3 * k], cb = conics[3 * k + 1], cc = conics[3 * k + 2];
            const T o = opac[k];
            const T* f = feats + k * D;
            const T thr = std::log(o * T(255.0));
            int xs, xe, ys, ye;
            pixel_span(mx, radii[2 * k], px0, px1, xs, xe);
            pixel_span(my, radii[2 * k + 1], py0, py1, ys, ye);
            T sig[TILE], vis[TILE];
            for (int y = ys; y < ye; ++y) {
                const T dy = (T(y) + T(0.5)) - my;
                int rs, re;
                if (!row_span(mx, dy, ca, cb, cc, thr, xs, xe, rs, re)) continue;
                eval_row(rs, re, mx, dy, ca, cb, cc, sig, vis);
                for (int x = rs; x < re; ++x) {
                    const int i = (y - py0) * TILE + (x - px0);
                    if (done[i]) continue;
                    const T v = vis[x - rs];
                    const T alpha = std::min(alpha_max, o * v);
                    if (sig[x - rs] < T(0) || alpha < alpha_min) continue;
                    const T nT = Tr[i] * (T(1) - alpha);
                    if (nT <= t_min) { done[i] = true; --active; continue; }
                    const T w = alpha * Tr[i];
                    T* acc_i = acc.data() + static_cast<size_t>(i) * D;
                    for (int d = 0; d < D; ++d) acc_i[d] += w * f[d];
                    Tr[i] = nT;
                    last[i] = static_cast<int32_t>(j - start + 1);
                }
            }
        }
        for (int y = py0; y < py1; ++y) {
            for (int x = px0; x < px1; ++x) {
                const int i = (y - py0) * TILE + (x - px0);
                const int64_t p = (c * H + y) * W + x;
                out_T[p] = Tr[i];
                out_last[p] = last[i];
                for (int d = 0; d < D; ++d) out_img[p * D + d] = acc[static_cast<size_t>(i) * D + d];
            }
        }
    });
}

template <typename T>
void backward(int64_t C, int64_t N, int D, int W, int H, const T* means2d, const T* conics,
              const T* feats, const T* opac, const int32_t* radii, const int64_t* offsets,
              const int64_t* ids, const T* final_T, const int32_t* last_in, const T* v_img,
              const T* v_alpha, T* g_means2d, T* g_conics, T* g_feats, T* g_opac,
              int n_threads) {
    const int tx = (W + TILE - 1) / TILE, ty = (H + TILE - 1) / TILE;
    const int64_t nt = static_cast<int64_t>(tx) * ty;
    const T alpha_min = T(1.0 / 255.0), alpha_max = T(0.999);
    parallel_for(C * nt, n_threads, [&](int64_t item) {
        const int64_t c = item / nt;
        const int tile = static_cast<int>(item % nt);
        const int px0 = (tile % tx) * TILE, py0 = (tile / tx) * TILE;
        const int px1 = std::min(px0 + TILE, W), py1 = std::min(py0 + TILE, H);
        const int64_t start = offsets[item], end = offsets[item + 1];
        if (start == end) return;
        T Tr[TILE_PIX], Tfin[TILE_PIX], va[TILE_PIX];
        int32_t last[TILE_PIX];
        std::vector<T> buf(static_cast<size_t>(TILE_PIX) * D, T(0));
        std::vector<T> vimg(static_cast<size_t>(TILE_PIX) * D, T(0));
        std::vector<T> gf(D);
        int32_t max_last = 0;
        for (int i = 0; i < TILE_PIX; ++i) { Tr[i] = T(1); Tfin[i] = T(1); va[i] = T(0); last[i] = 0; }
        for (int y = py0; y < py1; ++y) {
            for (int x = px0; x < px1; ++x) {
                const int i = (y - py0) * TILE + (x - px0);
                const int64_t p = (c * H + y) * W + x;
                Tr[i] = Tfin[i] = final_T[p];
                last[i] = last_in[p];
                va[i] = v_alpha ? v_alpha[p] : T(0);
                for (int d = 0; d < D; ++d) vimg[static_cast<size_t>(i) * D + d] = v_img ? v_img[p * D + d] : T(0);
                max_last = std::max(max_last, last[i]);
            }
        }
        for (int64_t j = start + max_last - 1; j >= start; --j) {
            const int32_t rank = static_cast<int32_t>(j - start);
            const int64_t k = ids[j];
            const T mx = means2d[2 * k], my = means2d[2 * k + 1];
            const T ca = conics[3 * k], cb = conics[3 * k + 1], cc = conics[3 * k + 2];
            const T o = opac[k];
            const T* f = feats + k * D;
            T gmx = 0, gmy = 0, gca = 0, gcb = 0, gcc = 0, go = 0;
            std::fill(gf.begin(), gf.end(), T(0));
            const T thr = std::log(o * T(255.0));
            int xs, xe, ys, ye;
            pixel_span(mx, radii[2 * k], px0, px1, xs, xe);
            pixel_span(my, radii[2 * k + 1], py0, py1, ys, ye);
            T sigr[TILE], visr[TILE];
            for (int y = ys; y < ye; ++y) {
                const T dy = (T(y) + T(0.5)) - my;
                int rs, re;
                if (!row_span(mx, dy, ca, cb, cc, thr, xs, xe, rs, re)) continue;
                eval_row(rs, re, mx, dy, ca, cb, cc, sigr, visr);
                for (int x = rs; x < re; ++x) {
                    const int i = (y - py0) * TILE + (x - px0);
                    if (rank >= last[i]) continue;
                    const T sigma = sigr[x - rs];
                    const T vis = visr[x - rs];
                    const T raw = o * vis;
                    const T alpha = std::min(alpha_max, raw);
                    if (sigma < T(0) || alpha < alpha_min) continue;
                    const T dx = (T(x) + T(0.5)) - mx;
                    const T ra = T(1) / (T(1) - alpha);
                    Tr[i] *= ra;  // transmittance in front of this Gaussian
                    const T w = alpha * Tr[i];
                    T* b = buf.data() + static_cast<size_t>(i) * D;
                    const T* vi = vimg.data() + static_cast<size_t>(i) * D;
                    T v_a = Tfin[i] * ra * va[i];
                    for (int d = 0; d < D; ++d) {
                        gf[d] += w * vi[d];
                        v_a += (f[d] * Tr[i] - b[d] * ra) * vi[d];
                        b[d] += f[d] * w;
                    }
                    if (raw <= alpha_max) {
                        go += vis * v_a;
                        const T v_sigma = -raw * v_a;
                        gca += T(0.5) * dx * dx * v_sigma;
                        gcb += dx * dy * v_sigma;
                        gcc += T(0.5) * dy * dy * v_sigma;
                        gmx -= v_sigma * (ca * dx + cb * dy);
                        gmy -= v_sigma * (cb * dx + cc * dy);
                    }
                }
            }
            g_means2d[2 * j] = gmx;
            g_means2d[2 * j + 1] = gmy;
            g_conics[3 * j] = gca;
            g_conics[3 * j + 1] = gcb;
            g_conics[3 * j + 2] = gcc;
            g_opac[j] = go;
            for (int d = 0; d < D; ++d) g_feats[j * D + d] = gf[d];
        }
    });
}

}  // namespace

extern "C" {

int ds4d_raster_abi_version() { return 1; }

#define DS4D_EXPORT(SUFFIX, T)                                                                   \
    void ds4d_count_tiles_##SUFFIX(int64_t C, int64_t N, int W, int H, const T* m, const int32_t* r, \
                                   int32_t* counts) {                                            \
        count_tiles<T>(C, N, W, H, m, r, counts);                                                \
    }                                                                                            \
    void ds4d_fill_tiles_##SUFFIX(int64_t C, int64_t N, int W, int H, const T* m, const int32_t* r,  \
                                  const int64_t* order, const int64_t* offsets, int64_t* ids,    \
                                  int nt) {                                                      \
        fill_tiles<T>(C, N, W, H, m, r, order, offsets, ids, nt);                                \
    }                                                                                            \
    void ds4d_forward_##SUFFIX(int64_t C, int64_t N, int D, int W, int H, const T* m, const T* con, \
                               const T* f, const T* o, const int32_t* r, const int64_t* off,      \
                               const int64_t* ids, T* img, T* tr, int32_t* last, int nt) {        \
        forward<T>(C, N, D, W, H, m, con, f, o, r, off, ids, img, tr, last, nt);                 \
    }                                                                                            \
    void ds4d_backward_##SUFFIX(int64_t C, int64_t N, int D, int W, int H, const T* m,             \
                                const T* con, const T* f, const T* o, const int32_t* r,          \
                                const int64_t* off, const int64_t* ids, const T* tr,             \
                                const int32_t* last, const T* vimg, const T* va, T* gm, T* gc,   \
                                T* gf, T* go, int nt) {                                          \
        backward<T>(C, N, D, W, H, m, con, f, o, r, off, ids, tr, last, vimg, va, gm, gc, gf, go, \
                    nt);                                                                         \
    }

DS4D_EXPORT(f32, float)
DS4D_EXPORT(f64, double)

}  // extern "C"
