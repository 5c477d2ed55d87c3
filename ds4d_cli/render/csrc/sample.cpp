// Bilinear sampling of the frame feature maps at the Gaussians' projections
// (ds4d_cli/model/sampling.py, sample_maps), forward and backward to the maps.
//
// The same maths as torch's grid_sample(mode="bilinear", padding_mode="zeros",
// align_corners=False): a grid coordinate g in [-1, 1] lands on pixel (g + 1) / 2 * size - 0.5,
// and each of the four corners counts only if it lies inside the map. Every (frame, view) map
// [C, h, w] is sampled at its view's N points; the output is [B*V, N, C], the layout the fit
// uses next (grid_sample's [B*V, C, 1, N] needed a transposing copy). torch's backward of this
// call took about 17 ms of a default step on a loaded machine, for a few million multiply-adds.
// Maps are independent, so each thread scatters into its own maps: no races, and the sums do
// not depend on the thread count.

#include <cmath>
#include <cstdint>

#include "pool.hpp"

namespace {

template <typename T>
struct Taps {
    int64_t idx[4];  // flat pixel index of each corner, -1 when outside the map
    T w[4];
    Taps(T gx, T gy, int h, int w_) {
        const T ix = ((gx + T(1)) * T(w_) - T(1)) * T(0.5), iy = ((gy + T(1)) * T(h) - T(1)) * T(0.5);
        for (int k = 0; k < 4; ++k) idx[k] = -1, w[k] = 0;
        if (!(ix > T(-1) && ix < T(w_) && iy > T(-1) && iy < T(h))) return;  // no corner inside (or NaN)
        const int x0 = static_cast<int>(std::floor(ix)), y0 = static_cast<int>(std::floor(iy));
        const T fx = ix - T(x0), fy = iy - T(y0);
        const int xs[4] = {x0, x0 + 1, x0, x0 + 1}, ys[4] = {y0, y0, y0 + 1, y0 + 1};
        const T ws[4] = {(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy};
        for (int k = 0; k < 4; ++k) {
            if (xs[k] >= 0 && xs[k] < w_ && ys[k] >= 0 && ys[k] < h) {
                idx[k] = int64_t(ys[k]) * w_ + xs[k];
                w[k] = ws[k];
            }
        }
    }
};

template <typename T>
void sample_forward(int64_t BV, int V, int C, int h, int w, int64_t N, const T* maps, const T* grid, T* out, int nt) {
    const int64_t plane = int64_t(h) * w;
    ds4d::parallel_for(BV, nt, [&](int64_t i) {
        const T* m = maps + i * C * plane;
        const T* g = grid + (i % V) * N * 2;
        T* o = out + i * N * C;
        for (int64_t n = 0; n < N; ++n) {
            Taps<T> t(g[2 * n], g[2 * n + 1], h, w);
            T* on = o + n * C;
            for (int c = 0; c < C; ++c) {
                const T* mc = m + c * plane;
                T v = 0;
                for (int k = 0; k < 4; ++k)
                    if (t.idx[k] >= 0) v += t.w[k] * mc[t.idx[k]];
                on[c] = v;
            }
        }
    });
}

template <typename T>
void sample_backward(int64_t BV, int V, int C, int h, int w, int64_t N, const T* grid, const T* grad_out,
                     T* grad_maps, int nt) {
    const int64_t plane = int64_t(h) * w;
    ds4d::parallel_for(BV, nt, [&](int64_t i) {
        T* m = grad_maps + i * C * plane;
        for (int64_t j = 0; j < C * plane; ++j) m[j] = 0;
        const T* g = grid + (i % V) * N * 2;
        const T* go = grad_out + i * N * C;
        for (int64_t n = 0; n < N; ++n) {
            Taps<T> t(g[2 * n], g[2 * n + 1], h, w);
            const T* gn = go + n * C;
            for (int k = 0; k < 4; ++k) {
                if (t.idx[k] < 0) continue;
                T* mk = m + t.idx[k];
                for (int c = 0; c < C; ++c) mk[c * plane] += t.w[k] * gn[c];
            }
        }
    });
}

}  // namespace

extern "C" {

#define DS4D_SAMPLE_EXPORT(SUFFIX, T)                                                                 \
    /* maps [BV,C,h,w] (map i belongs to view i % V), grid [V,N,2], out [BV,N,C] */                    \
    void ds4d_sample_maps_##SUFFIX(int64_t BV, int V, int C, int h, int w, int64_t N, const T* maps,  \
                                   const T* grid, T* out, int nt) {                                   \
        sample_forward<T>(BV, V, C, h, w, N, maps, grid, out, nt);                                    \
    }                                                                                                 \
    /* grad_out [BV,N,C] -> grad_maps [BV,C,h,w] (overwritten) */                                     \
    void ds4d_sample_maps_backward_##SUFFIX(int64_t BV, int V, int C, int h, int w, int64_t N,        \
                                            const T* grid, const T* grad_out, T* grad_maps, int nt) { \
        sample_backward<T>(BV, V, C, h, w, N, grid, grad_out, grad_maps, nt);                         \
    }

DS4D_SAMPLE_EXPORT(f32, float)
DS4D_SAMPLE_EXPORT(f64, double)

}  // extern "C"
