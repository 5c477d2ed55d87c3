// Gaussian splatting on the CPU: EWA projection, depth sort, tile binning, front-to-back
// compositing, and the hand-written backward of all of it.
//
// Plain C++17 with a C ABI (loaded through ctypes): it needs only g++, no torch headers, so it
// builds in seconds on a fresh machine. The Python side (render/cpu.py) owns every buffer that
// outlives a call; a render is five calls:
//
//   ds4d_project   means/quats/scales/opacities/colours -> means2d, conics, feats (rgb, depth),
//                  per-camera opacity, radii. Same maths as render/projection.py (gsplat 1.5.3's
//                  pinhole projection) and render.evaluate_colors (SH degree 0..3).
//   ds4d_bin       per camera: visible Gaussians radix-sorted front to back, tile offsets.
//   ds4d_forward   packs the visible Gaussians in depth order (one cache line each), fills the
//                  per-tile lists and composites every (camera, 16x16 tile).
//   ds4d_backward  the compositor's backward, summed per (camera, Gaussian).
//   ds4d_project_backward  the projection's (and SH's) backward to the inputs.
//
// Compositing is SIMD over 8-pixel half-rows (GCC/Clang vector extensions: AVX2 with
// -march=native, pairs of SSE/NEON registers otherwise). For each Gaussian a tile lists, the
// vectors its box covers are evaluated branch-free first (sigma, exp, alpha: independent chains
// the CPU overlaps), then composited under lane masks.
//
// Work is spread over a persistent thread pool (see pool.hpp). Every write has one owner (a
// tile's pixels and intersections, a camera's list, a Gaussian's gradient), so results are
// deterministic and independent of the thread count.
//
// Per pixel (centre at +0.5), for the tile's Gaussians in depth order:
//   sigma = a dx^2/2 + b dx dy + c dy^2/2,  alpha = min(0.999, o exp(-sigma)),
//   skipped when sigma < 0 or alpha < 1/255; the ray stops (exclusive) when T(1-alpha) <= 1e-4.
// The backward pass walks each pixel's list back to front, recovering T by division (as the
// gsplat CUDA kernels do) instead of storing per-sample state.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "pool.hpp"

namespace {

using ds4d::parallel_for;
using ds4d::parallel_range;

constexpr int TILE = 16;
constexpr int FEAT = 4;  // fused path: rgb + depth

// projection constants (render/projection.py)
constexpr double ALPHA_MIN = 1.0 / 255.0;
constexpr double ALPHA_MAX = 0.999;
constexpr double T_MIN = 1e-4;
constexpr double EPS2D = 0.3;
constexpr double NEAR_PLANE = 0.01;
constexpr double FAR_PLANE = 1e10;
constexpr double MAX_EXTENT = 3.33;
constexpr double NORM_EPS = 1e-12;  // torch.nn.functional.normalize

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

// ------------------------------------------------------------------------------ projection

template <typename T>
struct Camera {
    T R[9], t[3];  // world to camera
    T fx, fy, cx, cy;
    T lim_xp, lim_xn, lim_yp, lim_yn;  // Jacobian clamp: 1.3x the field of view
    T pos[3];                          // camera centre in world space (SH directions)
};

template <typename T>
std::vector<Camera<T>> make_cameras(int64_t C, const T* viewmats, const T* Ks, int W, int H) {
    std::vector<Camera<T>> cams(C);
    for (int64_t c = 0; c < C; ++c) {
        const T* v = viewmats + 16 * c;
        const T* k = Ks + 9 * c;
        Camera<T>& cam = cams[c];
        for (int i = 0; i < 3; ++i) {
            for (int j = 0; j < 3; ++j) cam.R[3 * i + j] = v[4 * i + j];
            cam.t[i] = v[4 * i + 3];
        }
        cam.fx = k[0];
        cam.fy = k[4];
        cam.cx = k[2];
        cam.cy = k[5];
        const T tan_x = T(0.5) * T(W) / cam.fx, tan_y = T(0.5) * T(H) / cam.fy;
        cam.lim_xp = (T(W) - cam.cx) / cam.fx + T(0.3) * tan_x;
        cam.lim_xn = cam.cx / cam.fx + T(0.3) * tan_x;
        cam.lim_yp = (T(H) - cam.cy) / cam.fy + T(0.3) * tan_y;
        cam.lim_yn = cam.cy / cam.fy + T(0.3) * tan_y;
        for (int i = 0; i < 3; ++i)
            cam.pos[i] = -(cam.R[i] * cam.t[0] + cam.R[3 + i] * cam.t[1] + cam.R[6 + i] * cam.t[2]);
    }
    return cams;
}

// Strides (elements) between cameras of each input: 0 = shared by every camera.
struct Strides {
    int64_t means, quats, scales, opac, colors;
};

template <typename T>
struct Rotation {
    T q[4];     // normalised (w, x, y, z)
    T inv_norm; // 1 / max(|q|, eps)
    bool tiny;  // |q| <= eps: normalize() divides by eps, its Jacobian is 1/eps
    T R[9];
};

template <typename T>
inline Rotation<T> rotation(const T* quat) {
    Rotation<T> r;
    const T n = std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
    r.tiny = !(n > T(NORM_EPS));
    r.inv_norm = T(1) / (r.tiny ? T(NORM_EPS) : n);
    for (int i = 0; i < 4; ++i) r.q[i] = quat[i] * r.inv_norm;
    const T w = r.q[0], x = r.q[1], y = r.q[2], z = r.q[3];
    T* R = r.R;
    R[0] = 1 - 2 * (y * y + z * z);
    R[1] = 2 * (x * y - w * z);
    R[2] = 2 * (x * z + w * y);
    R[3] = 2 * (x * y + w * z);
    R[4] = 1 - 2 * (x * x + z * z);
    R[5] = 2 * (y * z - w * x);
    R[6] = 2 * (x * z - w * y);
    R[7] = 2 * (y * z + w * x);
    R[8] = 1 - 2 * (x * x + y * y);
    return r;
}

// Symmetric 3x3 stored as [00, 01, 02, 11, 12, 22].
template <typename T>
inline void mmt(const T* M, T* S) {  // S = M M^T
    S[0] = M[0] * M[0] + M[1] * M[1] + M[2] * M[2];
    S[1] = M[0] * M[3] + M[1] * M[4] + M[2] * M[5];
    S[2] = M[0] * M[6] + M[1] * M[7] + M[2] * M[8];
    S[3] = M[3] * M[3] + M[4] * M[4] + M[5] * M[5];
    S[4] = M[3] * M[6] + M[4] * M[7] + M[5] * M[8];
    S[5] = M[6] * M[6] + M[7] * M[7] + M[8] * M[8];
}

template <typename T>
inline void sym_full(const T* S, T* F) {
    F[0] = S[0]; F[1] = S[1]; F[2] = S[2];
    F[3] = S[1]; F[4] = S[3]; F[5] = S[4];
    F[6] = S[2]; F[7] = S[4]; F[8] = S[5];
}

// A S A^T for full 3x3 A and symmetric S (full storage in and out).
template <typename T>
inline void sandwich(const T* A, const T* S, T* out) {
    T AS[9];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            AS[3 * i + j] = A[3 * i] * S[j] + A[3 * i + 1] * S[3 + j] + A[3 * i + 2] * S[6 + j];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            out[3 * i + j] = AS[3 * i] * A[3 * j] + AS[3 * i + 1] * A[3 * j + 1] + AS[3 * i + 2] * A[3 * j + 2];
}

// A^T S A for full 3x3 A and S.
template <typename T>
inline void sandwich_t(const T* A, const T* S, T* out) {
    T SA[9];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            SA[3 * i + j] = S[3 * i] * A[j] + S[3 * i + 1] * A[3 + j] + S[3 * i + 2] * A[6 + j];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            out[3 * i + j] = A[i] * SA[j] + A[3 + i] * SA[3 + j] + A[6 + i] * SA[6 + j];
}

// Real SH basis (gsplat's _eval_sh_bases_fast, Sloan 2013) at unit direction d, degrees
// 0..deg; grad (optional) receives d basis_k / d (x, y, z) as grad[3k..3k+2].
template <typename T>
inline void sh_basis(int deg, const T* d, T* b, T* grad) {
    const T x = d[0], y = d[1], z = d[2];
    b[0] = T(0.2820947917738781);
    if (grad) grad[0] = grad[1] = grad[2] = T(0);
    if (deg < 1) return;
    const T k1 = T(0.48860251190292);
    b[1] = -k1 * y;
    b[2] = k1 * z;
    b[3] = -k1 * x;
    if (grad) {
        T* g = grad + 3;
        g[0] = 0; g[1] = -k1; g[2] = 0;
        g[3] = 0; g[4] = 0; g[5] = k1;
        g[6] = -k1; g[7] = 0; g[8] = 0;
    }
    if (deg < 2) return;
    const T z2 = z * z;
    const T kb = T(-1.092548430592079), ka = T(0.5462742152960395), k6 = T(0.9461746957575601);
    const T c1 = x * x - y * y, s1 = 2 * x * y;
    b[4] = ka * s1;
    b[5] = kb * z * y;
    b[6] = k6 * z2 - T(0.3153915652525201);
    b[7] = kb * z * x;
    b[8] = ka * c1;
    if (grad) {
        T* g = grad + 12;
        g[0] = 2 * ka * y; g[1] = 2 * ka * x; g[2] = 0;
        g[3] = 0; g[4] = kb * z; g[5] = kb * y;
        g[6] = 0; g[7] = 0; g[8] = 2 * k6 * z;
        g[9] = kb * z; g[10] = 0; g[11] = kb * x;
        g[12] = 2 * ka * x; g[13] = -2 * ka * y; g[14] = 0;
    }
    if (deg < 3) return;
    const T kc2 = T(-2.285228997322329), kc0 = T(0.4570457994644658);
    const T kb3 = T(1.445305721320277), ka3 = T(-0.5900435899266435);
    const T k12a = T(1.865881662950577), k12b = T(-1.119528997770346);
    const T tc = kc2 * z2 + kc0;
    const T tb = kb3 * z;
    const T c2 = x * c1 - y * s1, s2 = x * s1 + y * c1;
    b[9] = ka3 * s2;
    b[10] = tb * s1;
    b[11] = tc * y;
    b[12] = z * (k12a * z2 + k12b);
    b[13] = tc * x;
    b[14] = tb * c1;
    b[15] = ka3 * c2;
    if (grad) {
        T* g = grad + 27;
        g[0] = 3 * ka3 * s1; g[1] = 3 * ka3 * c1; g[2] = 0;
        g[3] = 2 * tb * y; g[4] = 2 * tb * x; g[5] = kb3 * s1;
        g[6] = 0; g[7] = tc; g[8] = 2 * kc2 * z * y;
        g[9] = 0; g[10] = 0; g[11] = 3 * k12a * z2 + k12b;
        g[12] = tc; g[13] = 0; g[14] = 2 * kc2 * z * x;
        g[15] = 2 * tb * x; g[16] = -2 * tb * y; g[17] = kb3 * c1;
        g[18] = 3 * ka3 * c1; g[19] = -3 * ka3 * s1; g[20] = 0;
    }
}

// Everything the forward computes for one (camera, Gaussian) that the backward needs again.
template <typename T>
struct Proj {
    Rotation<T> rot;
    T M[9];              // R diag(s)
    T p[3];              // camera-space mean
    T cov_c[9];          // camera-space covariance (full)
    bool valid_z, valid;
    T z, ux, uy;
    bool in_x, in_y;     // the Jacobian's tan clamps are inactive
    T J00, J02, J11, J12;
    T a, b, c, det;      // dilated 2D covariance [[a, b], [b, c]]
};

template <typename T>
inline void project_one(const Camera<T>& cam, const T* mean, const T* quat, const T* scale, Proj<T>& P) {
    P.rot = rotation(quat);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) P.M[3 * i + j] = P.rot.R[3 * i + j] * scale[j];
    T S[6], Sf[9];
    mmt(P.M, S);
    sym_full(S, Sf);
    const T* R = cam.R;
    for (int i = 0; i < 3; ++i)
        P.p[i] = R[3 * i] * mean[0] + R[3 * i + 1] * mean[1] + R[3 * i + 2] * mean[2] + cam.t[i];
    sandwich(R, Sf, P.cov_c);
    const T tx = P.p[0], ty = P.p[1], tz = P.p[2];
    P.valid_z = tz > T(NEAR_PLANE) && tz < T(FAR_PLANE);
    P.z = P.valid_z ? tz : T(1);
    const T rx = tx / P.z, ry = ty / P.z;
    P.in_x = rx > -cam.lim_xn && rx < cam.lim_xp;
    P.in_y = ry > -cam.lim_yn && ry < cam.lim_yp;
    P.ux = std::min(std::max(rx, -cam.lim_xn), cam.lim_xp);
    P.uy = std::min(std::max(ry, -cam.lim_yn), cam.lim_yp);
    P.J00 = cam.fx / P.z;
    P.J02 = -cam.fx * P.ux / P.z;
    P.J11 = cam.fy / P.z;
    P.J12 = -cam.fy * P.uy / P.z;
    const T* V = P.cov_c;
    const T a = P.J00 * P.J00 * V[0] + 2 * P.J00 * P.J02 * V[2] + P.J02 * P.J02 * V[8];
    const T b = P.J00 * P.J11 * V[1] + P.J00 * P.J12 * V[2] + P.J02 * P.J11 * V[5] + P.J02 * P.J12 * V[8];
    const T c = P.J11 * P.J11 * V[4] + 2 * P.J11 * P.J12 * V[5] + P.J12 * P.J12 * V[8];
    P.a = a + T(EPS2D);
    P.c = c + T(EPS2D);
    P.b = b;
    P.det = P.a * P.c - P.b * P.b;
    P.valid = P.valid_z && P.det > T(0);
}

struct ProjArgs {
    int64_t C, N;
    int W, H;
    int sh_degree;  // -1: colours are RGB [.., N, 3]; else SH coefficients [.., N, K, 3]
    int sh_coeffs;  // K
    Strides s;
};

template <typename T>
void project_forward(const ProjArgs& A, const T* means, const T* quats, const T* scales,
                     const T* opac, const T* colors, const T* viewmats, const T* Ks, T* means2d,
                     T* conics, T* feats, T* opac_c, int32_t* radii, int n_threads) {
    const auto cams = make_cameras<T>(A.C, viewmats, Ks, A.W, A.H);
    const int64_t C = A.C, N = A.N;
    const int nb = A.sh_degree >= 0 ? (A.sh_degree + 1) * (A.sh_degree + 1) : 0;
    parallel_range(N, 512, n_threads, [&](int64_t g0, int64_t g1) {
        Proj<T> P;
        T basis[16];
        for (int64_t c = 0; c < C; ++c) {
            const Camera<T>& cam = cams[c];
            for (int64_t g = g0; g < g1; ++g) {
                const int64_t k = c * N + g;
                const T* mean = means + c * A.s.means + 3 * g;
                project_one(cam, mean, quats + c * A.s.quats + 4 * g, scales + c * A.s.scales + 3 * g, P);
                const T d = P.valid ? P.det : T(1);
                conics[3 * k] = P.c / d;
                conics[3 * k + 1] = -P.b / d;
                conics[3 * k + 2] = P.a / d;
                const T mx = cam.fx * P.p[0] / P.z + cam.cx;
                const T my = cam.fy * P.p[1] / P.z + cam.cy;
                means2d[2 * k] = mx;
                means2d[2 * k + 1] = my;
                const T o = opac[c * A.s.opac + g];
                opac_c[k] = o;
                // opacity-aware bounding box: alpha < 1/255 beyond it, at most 3.33 sigma
                const T extent = std::min(std::sqrt(T(2) * std::log(std::max(o, T(ALPHA_MIN)) / T(ALPHA_MIN))),
                                          T(MAX_EXTENT));
                const T rx = std::ceil(extent * std::sqrt(std::max(P.a, T(0))));
                const T ry = std::ceil(extent * std::sqrt(std::max(P.c, T(0))));
                const bool keep = P.valid && o >= T(ALPHA_MIN) && rx > 0 && ry > 0 && mx + rx > 0 &&
                                  mx - rx < T(A.W) && my + ry > 0 && my - ry < T(A.H);
                radii[2 * k] = keep ? static_cast<int32_t>(rx) : 0;
                radii[2 * k + 1] = keep ? static_cast<int32_t>(ry) : 0;
                T* f = feats + FEAT * k;
                if (A.sh_degree < 0) {
                    const T* col = colors + c * A.s.colors + 3 * g;
                    f[0] = col[0]; f[1] = col[1]; f[2] = col[2];
                } else {
                    T dir[3] = {mean[0] - cam.pos[0], mean[1] - cam.pos[1], mean[2] - cam.pos[2]};
                    const T n = std::sqrt(dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]);
                    const T inv = T(1) / std::max(n, T(NORM_EPS));
                    for (int i = 0; i < 3; ++i) dir[i] *= inv;
                    sh_basis(A.sh_degree, dir, basis, static_cast<T*>(nullptr));
                    const T* co = colors + c * A.s.colors + int64_t(A.sh_coeffs) * 3 * g;
                    for (int ch = 0; ch < 3; ++ch) {
                        T acc = 0;
                        for (int j = 0; j < nb; ++j) acc += basis[j] * co[3 * j + ch];
                        f[ch] = std::max(acc + T(0.5), T(0));
                    }
                }
                f[3] = P.p[2];  // camera z, composited as a fourth channel
            }
        }
    });
}

// Gradients of a loss with respect to the projection's inputs, given its gradients with
// respect to the outputs (any output gradient may be null = zero). Shared inputs (stride 0)
// accumulate over cameras; each thread owns a range of Gaussians, so there are no races.
template <typename T>
void project_backward(const ProjArgs& A, const T* means, const T* quats, const T* scales,
                      const T* colors, const T* viewmats, const T* Ks, const T* v_means2d,
                      const T* v_conics, const T* v_feats, const T* v_opac_c, T* g_means,
                      T* g_quats, T* g_scales, T* g_opac, T* g_colors, int n_threads) {
    const auto cams = make_cameras<T>(A.C, viewmats, Ks, A.W, A.H);
    const int64_t C = A.C, N = A.N;
    const int nb = A.sh_degree >= 0 ? (A.sh_degree + 1) * (A.sh_degree + 1) : 0;
    parallel_range(N, 256, n_threads, [&](int64_t g0, int64_t g1) {
        Proj<T> P;
        T basis[16], dbasis[48];
        for (int64_t g = g0; g < g1; ++g) {
            for (int64_t c = 0; c < C; ++c) {
                const int64_t k = c * N + g;
                const Camera<T>& cam = cams[c];
                const T vm2[2] = {v_means2d ? v_means2d[2 * k] : T(0), v_means2d ? v_means2d[2 * k + 1] : T(0)};
                const T vcon[3] = {v_conics ? v_conics[3 * k] : T(0), v_conics ? v_conics[3 * k + 1] : T(0),
                                   v_conics ? v_conics[3 * k + 2] : T(0)};
                T vf[FEAT] = {0, 0, 0, 0};
                if (v_feats)
                    for (int i = 0; i < FEAT; ++i) vf[i] = v_feats[FEAT * k + i];
                const T vo = v_opac_c ? v_opac_c[k] : T(0);
                if (vo != T(0)) g_opac[c * A.s.opac + g] += vo;
                const bool geo = vm2[0] != T(0) || vm2[1] != T(0) || vcon[0] != T(0) || vcon[1] != T(0) ||
                                 vcon[2] != T(0) || vf[3] != T(0);
                const bool col = vf[0] != T(0) || vf[1] != T(0) || vf[2] != T(0);
                if (!geo && !col) continue;
                const T* mean = means + c * A.s.means + 3 * g;
                T* gm = g_means + c * A.s.means + 3 * g;
                // ---- colours
                if (col) {
                    if (A.sh_degree < 0) {
                        T* gc = g_colors + c * A.s.colors + 3 * g;
                        gc[0] += vf[0]; gc[1] += vf[1]; gc[2] += vf[2];
                    } else {
                        const T raw[3] = {mean[0] - cam.pos[0], mean[1] - cam.pos[1], mean[2] - cam.pos[2]};
                        const T n = std::sqrt(raw[0] * raw[0] + raw[1] * raw[1] + raw[2] * raw[2]);
                        const bool tiny = !(n > T(NORM_EPS));
                        const T inv = T(1) / (tiny ? T(NORM_EPS) : n);
                        const T dir[3] = {raw[0] * inv, raw[1] * inv, raw[2] * inv};
                        sh_basis(A.sh_degree, dir, basis, dbasis);
                        const int64_t off = c * A.s.colors + int64_t(A.sh_coeffs) * 3 * g;
                        const T* co = colors + off;
                        T* gc = g_colors + off;
                        T v_rgb[3];
                        for (int ch = 0; ch < 3; ++ch) {
                            T acc = 0;
                            for (int j = 0; j < nb; ++j) acc += basis[j] * co[3 * j + ch];
                            v_rgb[ch] = acc + T(0.5) >= T(0) ? vf[ch] : T(0);  // clamp_min(0)
                        }
                        T v_dir[3] = {0, 0, 0};
                        for (int j = 0; j < nb; ++j) {
                            T vb = 0;
                            for (int ch = 0; ch < 3; ++ch) {
                                gc[3 * j + ch] += basis[j] * v_rgb[ch];
                                vb += co[3 * j + ch] * v_rgb[ch];
                            }
                            for (int i = 0; i < 3; ++i) v_dir[i] += vb * dbasis[3 * j + i];
                        }
                        if (A.sh_degree > 0) {
                            // normalize(): (v - d (d.v)) / |raw|, or v / eps below eps
                            const T dv = tiny ? T(0) : dir[0] * v_dir[0] + dir[1] * v_dir[1] + dir[2] * v_dir[2];
                            for (int i = 0; i < 3; ++i) gm[i] += (v_dir[i] - dir[i] * dv) * inv;
                        }
                    }
                }
                if (!geo) continue;
                // ---- geometry
                project_one(cam, mean, quats + c * A.s.quats + 4 * g, scales + c * A.s.scales + 3 * g, P);
                // conic = (c, -b, a) / d with d = det when valid, else 1 (no gradient through d)
                T va, vb, vc;
                if (P.valid) {
                    const T id = T(1) / P.det, id2 = id * id;
                    const T a = P.a, b = P.b, cc = P.c;
                    va = vcon[0] * (-cc * cc * id2) + vcon[1] * (b * cc * id2) + vcon[2] * (id - a * cc * id2);
                    vb = vcon[0] * (2 * b * cc * id2) + vcon[1] * (-id - 2 * b * b * id2) + vcon[2] * (2 * a * b * id2);
                    vc = vcon[0] * (id - cc * a * id2) + vcon[1] * (b * a * id2) + vcon[2] * (-a * a * id2);
                } else {
                    va = vcon[2];
                    vb = -vcon[1];
                    vc = vcon[0];
                }
                // 2D covariance J Sc J^T: dL = tr(Vm dSigma2) with Vm = [[va, vb/2], [vb/2, vc]]
                const T Vm[4] = {va, T(0.5) * vb, T(0.5) * vb, vc};
                const T J[6] = {P.J00, T(0), P.J02, T(0), P.J11, P.J12};
                // v_cov_c = J^T Vm J
                T VJ[6];  // Vm J (2x3)
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 3; ++j) VJ[3 * i + j] = Vm[2 * i] * J[j] + Vm[2 * i + 1] * J[3 + j];
                T v_cov_c[9];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j) v_cov_c[3 * i + j] = J[i] * VJ[j] + J[3 + i] * VJ[3 + j];
                // v_J = 2 Vm J Sc
                T vJ[6];
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 3; ++j)
                        vJ[3 * i + j] = 2 * (VJ[3 * i] * P.cov_c[j] + VJ[3 * i + 1] * P.cov_c[3 + j] +
                                             VJ[3 * i + 2] * P.cov_c[6 + j]);
                const T z = P.z, iz = T(1) / z, iz2 = iz * iz;
                const T tx = P.p[0], ty = P.p[1];
                T v_tx = 0, v_ty = 0, v_z = 0;
                // J00 = fx/z, J02 = -fx ux/z, J11 = fy/z, J12 = -fy uy/z
                v_z += -cam.fx * iz2 * vJ[0] + cam.fx * P.ux * iz2 * vJ[2] - cam.fy * iz2 * vJ[4] +
                       cam.fy * P.uy * iz2 * vJ[5];
                const T v_ux = -cam.fx * iz * vJ[2], v_uy = -cam.fy * iz * vJ[5];
                if (P.in_x) { v_tx += v_ux * iz; v_z -= v_ux * tx * iz2; }
                if (P.in_y) { v_ty += v_uy * iz; v_z -= v_uy * ty * iz2; }
                // means2d = (fx tx / z + cx, fy ty / z + cy)
                v_tx += cam.fx * iz * vm2[0];
                v_ty += cam.fy * iz * vm2[1];
                v_z -= (cam.fx * tx * vm2[0] + cam.fy * ty * vm2[1]) * iz2;
                const T v_tz = vf[3] + (P.valid_z ? v_z : T(0));  // culled depth: z = 1, a constant
                const T* R = cam.R;
                for (int i = 0; i < 3; ++i) gm[i] += R[i] * v_tx + R[3 + i] * v_ty + R[6 + i] * v_tz;
                // world covariance: v_Sigma = Rv^T v_cov_c Rv; v_M = 2 v_Sigma M (symmetric)
                T v_sig[9];
                sandwich_t(R, v_cov_c, v_sig);
                T vM[9];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j)
                        vM[3 * i + j] = (v_sig[3 * i] + v_sig[i]) * P.M[j] + (v_sig[3 * i + 1] + v_sig[3 + i]) * P.M[3 + j] +
                                        (v_sig[3 * i + 2] + v_sig[6 + i]) * P.M[6 + j];
                // M = Rq diag(s)
                const T* s = scales + c * A.s.scales + 3 * g;
                T* gs = g_scales + c * A.s.scales + 3 * g;
                T vR[9];
                for (int j = 0; j < 3; ++j) {
                    T acc = 0;
                    for (int i = 0; i < 3; ++i) {
                        vR[3 * i + j] = vM[3 * i + j] * s[j];
                        acc += vM[3 * i + j] * P.rot.R[3 * i + j];
                    }
                    gs[j] += acc;
                }
                const T w = P.rot.q[0], x = P.rot.q[1], y = P.rot.q[2], qz = P.rot.q[3];
                T vq[4];
                vq[0] = 2 * (-qz * vR[1] + y * vR[2] + qz * vR[3] - x * vR[5] - y * vR[6] + x * vR[7]);
                vq[1] = 2 * (y * vR[1] + qz * vR[2] + y * vR[3] - 2 * x * vR[4] - w * vR[5] + qz * vR[6] + w * vR[7] -
                             2 * x * vR[8]);
                vq[2] = 2 * (-2 * y * vR[0] + x * vR[1] + w * vR[2] + x * vR[3] + qz * vR[5] - w * vR[6] + qz * vR[7] -
                             2 * y * vR[8]);
                vq[3] = 2 * (-2 * qz * vR[0] - w * vR[1] + x * vR[2] + w * vR[3] - 2 * qz * vR[4] + y * vR[5] + x * vR[6] +
                             y * vR[7]);
                const T dq = P.rot.tiny ? T(0) : w * vq[0] + x * vq[1] + y * vq[2] + qz * vq[3];
                T* gq = g_quats + c * A.s.quats + 4 * g;
                for (int i = 0; i < 4; ++i) gq[i] += (vq[i] - P.rot.q[i] * dq) * P.rot.inv_norm;
            }
        }
    });
}

// ------------------------------------------------------------------------------ binning

// Order-preserving unsigned keys for floats (negative values flip every bit).
inline uint32_t sort_key(float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline uint64_t sort_key(double v) {
    uint64_t u;
    std::memcpy(&u, &v, sizeof(u));
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Stable LSD radix sort of (key, index) by key, 8 bits a pass; ties keep input order, so with
// indices ascending this is torch's stable argsort.
template <typename K>
void radix_sort(std::vector<K>& keys, std::vector<int32_t>& idx) {
    const size_t n = keys.size();
    std::vector<K> k2(n);
    std::vector<int32_t> i2(n);
    for (unsigned shift = 0; shift < 8 * sizeof(K); shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 0xFF) + 1];
        if (count[((keys[0] >> shift) & 0xFF) + 1] == n) continue;  // one bucket: nothing moves
        for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
        for (size_t i = 0; i < n; ++i) {
            const size_t dst = count[(keys[i] >> shift) & 0xFF]++;
            k2[dst] = keys[i];
            i2[dst] = idx[i];
        }
        keys.swap(k2);
        idx.swap(i2);
    }
}

// Per camera: the visible Gaussians (radii > 0) sorted by (depth, index) into order[c*N ..],
// their count into n_vis[c], and the per-tile intersection counts turned into offsets
// [C*tiles+1]. Returns the total number of (tile, Gaussian) intersections.
template <typename T>
int64_t bin(int64_t C, int64_t N, int W, int H, const T* means2d, const int32_t* radii,
            const T* depths, int64_t depth_stride, int32_t* order, int32_t* n_vis, int64_t* offsets,
            int n_threads) {
    using Key = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
    const int tx = (W + TILE - 1) / TILE, ty = (H + TILE - 1) / TILE;
    const int64_t nt = static_cast<int64_t>(tx) * ty;
    parallel_for(C, n_threads, [&](int64_t c) {
        std::vector<Key> keys;
        std::vector<int32_t> idx;
        keys.reserve(static_cast<size_t>(N));
        idx.reserve(static_cast<size_t>(N));
        for (int64_t g = 0; g < N; ++g) {
            const int64_t k = c * N + g;
            if (radii[2 * k] > 0 && radii[2 * k + 1] > 0) {
                keys.push_back(sort_key(depths[k * depth_stride]));
                idx.push_back(static_cast<int32_t>(g));
            }
        }
        if (!keys.empty()) radix_sort(keys, idx);
        int32_t* ord = order + c * N;
        int64_t* cnt = offsets + c * nt + 1;
        std::fill(cnt, cnt + nt, int64_t(0));
        for (size_t j = 0; j < idx.size(); ++j) {
            const int32_t g = idx[j];
            ord[j] = g;
            const int64_t k = c * N + g;
            TileRect r = tile_rect(means2d[2 * k], means2d[2 * k + 1], radii[2 * k], radii[2 * k + 1], tx, ty);
            for (int y = r.y0; y < r.y1; ++y)
                for (int x = r.x0; x < r.x1; ++x) cnt[y * tx + x] += 1;
        }
        n_vis[c] = static_cast<int32_t>(idx.size());
    });
    offsets[0] = 0;
    for (int64_t i = 1; i <= C * nt; ++i) offsets[i] += offsets[i - 1];
    return offsets[C * nt];
}

// ------------------------------------------------------------------------------ SIMD

// Eight pixels (half a tile row) per vector, through the GCC/Clang vector extensions: AVX2
// registers with -march=native on x86, pairs of SSE/NEON registers on a portable build.
constexpr int LANES = 8;
constexpr int HALVES = TILE / LANES;
constexpr int VECS = TILE * HALVES;  // vectors per tile

template <typename T>
struct Simd;
template <>
struct Simd<float> {
    typedef float V __attribute__((vector_size(32)));
    typedef int32_t M __attribute__((vector_size(32)));
};
template <>
struct Simd<double> {
    typedef double V __attribute__((vector_size(64)));
    typedef int64_t M __attribute__((vector_size(64)));
};

template <typename V, typename M>
inline V select(M m, V a, V b) {  // m ? a : b, lane-wise (m lanes are 0 or -1)
    return (V)(((M)a & m) | ((M)b & ~m));
}

#if defined(__AVX__)
inline Simd<float>::V select(Simd<float>::M m, Simd<float>::V a, Simd<float>::V b) {
    return (Simd<float>::V)_mm256_blendv_ps((__m256)b, (__m256)a, (__m256)m);
}
#endif

template <typename M>
inline bool any(M m) {
    uint64_t w[sizeof(M) / 8];
    std::memcpy(w, &m, sizeof(M));
    uint64_t r = 0;
    for (size_t i = 0; i < sizeof(M) / 8; ++i) r |= w[i];
    return r != 0;
}
#if defined(__AVX__)
inline bool any(Simd<float>::M m) { return _mm256_movemask_ps((__m256)m) != 0; }
#endif

template <typename M>
inline int count(M m) {
    int n = 0;
    for (int l = 0; l < LANES; ++l) n += m[l] != 0;
    return n;
}

template <typename V>
inline typename std::remove_reference<decltype(V{}[0])>::type hsum(V v) {
    auto s = v[0];
    for (int l = 1; l < LANES; ++l) s += v[l];
    return s;
}

// a * b + c; one rounding (a fused multiply-add) where the CPU has FMA. Explicit, not left to
// the compiler's contraction (-ffp-contract=off), so every call site rounds the same way.
inline Simd<float>::V fmadd(Simd<float>::V a, Simd<float>::V b, Simd<float>::V c) {
#if defined(__FMA__)
    return (Simd<float>::V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    return a * b + c;
#endif
}

inline Simd<double>::V fmadd(Simd<double>::V a, Simd<double>::V b, Simd<double>::V c) { return a * b + c; }

// exp(-s) for s >= 0. float: 2^t with t = -s log2(e) split into round(t) (the exponent bits)
// and f in [-1/2, 1/2], 2^f by a degree-5 polynomial (max relative error 2.5e-7); double:
// std::exp per lane. Forward and backward call the same code, so they make identical
// threshold decisions.
inline Simd<float>::V exp_neg(Simd<float>::V s) {
    typedef Simd<float>::V V;
    typedef Simd<float>::M M;
    V t = s * -1.44269504088896341f;
    t = select(t < -125.0f, V{} - 125.0f, t);
    const V n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
    const V f = t - n;
    V p = V{} + 1.3400432653725147e-3f;
    p = fmadd(p, f, V{} + 9.676037356257439e-3f);
    p = fmadd(p, f, V{} + 5.550327152013779e-2f);
    p = fmadd(p, f, V{} + 2.402210682630539e-1f);
    p = fmadd(p, f, V{} + 6.931471824645996e-1f);
    p = fmadd(p, f, V{} + 1.0000001192092896f);
    const M e = __builtin_convertvector(n, M) + 127;
    return p * (V)(e << 23);
}
inline Simd<double>::V exp_neg(Simd<double>::V s) {
    Simd<double>::V out;
    for (int l = 0; l < LANES; ++l) out[l] = std::exp(-s[l]);
    return out;
}

// One Gaussian as the compositor reads it, packed in depth order (one cache line for float):
// [mx, my, a, b, c, opacity, rx, ry, feats...]
constexpr int REC_HEAD = 8;
inline int record_size(int D) { return (REC_HEAD + D + 7) / 8 * 8; }

// One Gaussian over one tile: the vectors its bounding box covers (pixels outside the box have
// alpha < 1/255), with the per-column terms of sigma precomputed. Forward and backward build it
// and evaluate sigma the same way, so they make identical decisions.
template <typename T>
struct Visit {
    typedef typename Simd<T>::V V;
    int y0, y1, h0, h1;  // pixel rows [y0, y1), half-rows [h0, h1]
    int vb, ve, step;    // the same as vector indices: vb, vb + step, ... < ve
    V dx[HALVES];        // pixel centre x - mean x
    V qx[HALVES];        // a dx^2 / 2
    V bx[HALVES];        // b dx
    T hc;                // c / 2

    bool init(const T* rec, int px0, int py0, int px1, int py1) {
        int xs, xe;
        pixel_span(rec[0], static_cast<int32_t>(rec[6]), px0, px1, xs, xe);
        pixel_span(rec[1], static_cast<int32_t>(rec[7]), py0, py1, y0, y1);
        if (xs >= xe || y0 >= y1) return false;
        h0 = (xs - px0) / LANES;
        h1 = (xe - 1 - px0) / LANES;
        vb = (y0 - py0) * HALVES + h0;
        ve = (y1 - 1 - py0) * HALVES + h1 + 1;
        step = h1 > h0 ? 1 : HALVES;  // both halves of each row are contiguous; one is strided
        static_assert(HALVES == 2, "the vector walk assumes two halves per row");
        V lane;
        for (int l = 0; l < LANES; ++l) lane[l] = T(l) + T(0.5);
        const T ha = T(0.5) * rec[2];
        for (int h = h0; h <= h1; ++h) {
            dx[h] = (lane + T(px0 + h * LANES)) - rec[0];
            qx[h] = ha * dx[h] * dx[h];
            bx[h] = rec[3] * dx[h];
        }
        hc = T(0.5) * rec[4];
        return true;
    }
    // dy (pixel centre y - mean y) of vector v of the tile at row py0
    T dy(int v, int py0, T my) const { return (T(py0 + v / HALVES) + T(0.5)) - my; }
    // sigma = a dx^2/2 + b dx dy + c dy^2/2 and exp(-sigma) (0 where sigma < 0)
    void eval(int v, T dy, V& sig, V& vis) const {
        const int h = v % HALVES;
        sig = (qx[h] + bx[h] * dy) + hc * dy * dy;
        const V e = exp_neg(select(sig > T(0), sig, V{}));
        vis = select(sig >= T(0), e, V{});
    }
};

// ------------------------------------------------------------------------------ compositing

template <typename T, int DC>
void forward_tiles(int64_t C, int Dr, int W, int H, const T* packed, const int64_t* offsets,
                   const int32_t* ids, T* out_img, T* out_T, int32_t* out_last, int64_t* stats,
                   int n_threads) {
    std::atomic<int64_t> n_lanes{0}, n_pairs{0};
    typedef typename Simd<T>::V V;
    typedef typename Simd<T>::M M;
    const int D = DC > 0 ? DC : Dr;
    const int R = record_size(D);
    const int tx = (W + TILE - 1) / TILE, ty = (H + TILE - 1) / TILE;
    const int64_t nt = static_cast<int64_t>(tx) * ty;
    const T alpha_min = T(ALPHA_MIN), alpha_max = T(ALPHA_MAX), t_min = T(T_MIN);
    parallel_for(C * nt, n_threads, [&](int64_t item) {
        const int64_t c = item / nt;
        const int tile = static_cast<int>(item % nt);
        const int px0 = (tile % tx) * TILE, py0 = (tile / tx) * TILE;
        const int px1 = std::min(px0 + TILE, W), py1 = std::min(py0 + TILE, H);
        V Tr[VECS];
        M alive[VECS], last[VECS];
        std::vector<V> acc(static_cast<size_t>(VECS) * D, V{});
        V alphas[VECS];
        M oks[VECS];
        int active = 0;
        int64_t lanes = 0, pairs = 0;
        for (int v = 0; v < VECS; ++v) {
            Tr[v] = V{} + T(1);
            last[v] = M{};
            const int y = py0 + v / HALVES, x0 = px0 + (v % HALVES) * LANES;
            for (int l = 0; l < LANES; ++l) {
                const bool in = y < py1 && x0 + l < px1;
                alive[v][l] = in ? -1 : 0;
                active += in;
            }
        }
        const int64_t start = offsets[item], end = offsets[item + 1];
        for (int64_t j = start; j < end && active > 0; ++j) {
            const T* rec = packed + static_cast<int64_t>(ids[j]) * R;
            const T o = rec[5];
            const auto rank1 = static_cast<typename std::remove_reference<decltype(M{}[0])>::type>(j - start + 1);
            Visit<T> vs;
            if (!vs.init(rec, px0, py0, px1, py1)) continue;
            if (stats) lanes += int64_t(vs.y1 - vs.y0) * (vs.h1 - vs.h0 + 1) * LANES;
            // phase 1, branch-free: the exp chains of all vectors overlap
            for (int v = vs.vb; v < vs.ve; v += vs.step) {
                V sig, vis;
                vs.eval(v, vs.dy(v, py0, rec[1]), sig, vis);
                alphas[v] = select(o * vis < alpha_max, o * vis, V{} + alpha_max);
                oks[v] = alphas[v] >= alpha_min;  // vis = 0 where sigma < 0
            }
            // phase 2: composite
            for (int v = vs.vb; v < vs.ve; v += vs.step) {
                {
                    const V alpha = alphas[v];
                    M ok = oks[v] & alive[v];
                    if (!any(ok)) continue;
                    if (stats) pairs += count(ok);
                    const V nT = Tr[v] * (T(1) - alpha);
                    const M term = ok & (nT <= t_min);
                    if (any(term)) {  // the ray stops before this Gaussian (exclusive)
                        alive[v] &= ~term;
                        ok &= ~term;
                        active -= count(term);
                    }
                    const V w = select(ok, alpha * Tr[v], V{});
                    V* a = acc.data() + static_cast<size_t>(v) * D;
                    for (int d = 0; d < D; ++d) a[d] += w * rec[REC_HEAD + d];
                    Tr[v] = select(ok, nT, Tr[v]);
                    last[v] = select(ok, M{} + rank1, last[v]);
                }
            }
        }
        for (int v = 0; v < VECS; ++v) {
            const int y = py0 + v / HALVES, x0 = px0 + (v % HALVES) * LANES;
            if (y >= py1) continue;
            const V* a = acc.data() + static_cast<size_t>(v) * D;
            for (int l = 0; l < LANES && x0 + l < px1; ++l) {
                const int64_t p = (c * H + y) * W + x0 + l;
                out_T[p] = Tr[v][l];
                out_last[p] = static_cast<int32_t>(last[v][l]);
                for (int d = 0; d < D; ++d) out_img[p * D + d] = a[d][l];
            }
        }
        if (stats) {
            n_lanes += lanes;
            n_pairs += pairs;
        }
    });
    if (stats) {
        stats[0] += n_pairs;
        stats[1] += n_lanes;
    }
}

// Packs the visible Gaussians of each camera in depth order and fills the per-tile lists
// (ids are positions in the packed array, c*N + rank), then composites.
template <typename T>
void forward(int64_t C, int64_t N, int D, int W, int H, const T* means2d, const T* conics,
             const T* feats, const T* opac, const int32_t* radii, const int32_t* order,
             const int32_t* n_vis, const int64_t* offsets, int32_t* ids, T* packed, T* out_img,
             T* out_T, int32_t* out_last, int64_t* stats, int n_threads) {
    const int tx = (W + TILE - 1) / TILE, ty = (H + TILE - 1) / TILE;
    const int64_t nt = static_cast<int64_t>(tx) * ty;
    const int R = record_size(D);
    parallel_for(C, n_threads, [&](int64_t c) {
        std::vector<int64_t> cursor(offsets + c * nt, offsets + (c + 1) * nt);
        for (int32_t j = 0; j < n_vis[c]; ++j) {
            const int64_t k = c * N + order[c * N + j];
            const int64_t pos = c * N + j;
            T* rec = packed + pos * R;
            rec[0] = means2d[2 * k];
            rec[1] = means2d[2 * k + 1];
            rec[2] = conics[3 * k];
            rec[3] = conics[3 * k + 1];
            rec[4] = conics[3 * k + 2];
            rec[5] = opac[k];
            rec[6] = T(radii[2 * k]);
            rec[7] = T(radii[2 * k + 1]);
            for (int d = 0; d < D; ++d) rec[REC_HEAD + d] = feats[k * D + d];
            for (int d = REC_HEAD + D; d < R; ++d) rec[d] = T(0);
            TileRect r = tile_rect(rec[0], rec[1], radii[2 * k], radii[2 * k + 1], tx, ty);
            for (int y = r.y0; y < r.y1; ++y)
                for (int x = r.x0; x < r.x1; ++x) ids[cursor[y * tx + x]++] = static_cast<int32_t>(pos);
        }
    });
    if (D == 4)
        forward_tiles<T, 4>(C, D, W, H, packed, offsets, ids, out_img, out_T, out_last, stats, n_threads);
    else
        forward_tiles<T, 0>(C, D, W, H, packed, offsets, ids, out_img, out_T, out_last, stats, n_threads);
}

template <typename T, int DC>
void backward_tiles(int64_t C, int Dr, int W, int H, const T* packed, const int64_t* offsets,
                    const int32_t* ids, const T* final_T, const int32_t* last_in, const T* v_img,
                    const T* v_alpha, T* scratch, int n_threads) {
    typedef typename Simd<T>::V V;
    typedef typename Simd<T>::M M;
    typedef typename std::remove_reference<decltype(M{}[0])>::type MI;
    const int D = DC > 0 ? DC : Dr;
    const int R = record_size(D);
    const int stride = 6 + D;
    const int tx = (W + TILE - 1) / TILE, ty = (H + TILE - 1) / TILE;
    const int64_t nt = static_cast<int64_t>(tx) * ty;
    const T alpha_min = T(ALPHA_MIN), alpha_max = T(ALPHA_MAX);
    parallel_for(C * nt, n_threads, [&](int64_t item) {
        const int64_t c = item / nt;
        const int tile = static_cast<int>(item % nt);
        const int px0 = (tile % tx) * TILE, py0 = (tile / tx) * TILE;
        const int px1 = std::min(px0 + TILE, W), py1 = std::min(py0 + TILE, H);
        const int64_t start = offsets[item], end = offsets[item + 1];
        if (start == end) return;
        V Tr[VECS], Tfin[VECS], va[VECS];
        M last[VECS];
        std::vector<V> buf(static_cast<size_t>(VECS) * D, V{}), vimg(static_cast<size_t>(VECS) * D, V{});
        std::vector<V> gf(D);
        V viss[VECS];
        M oks[VECS];
        int32_t max_last = 0;
        for (int v = 0; v < VECS; ++v) {
            const int y = py0 + v / HALVES, x0 = px0 + (v % HALVES) * LANES;
            for (int l = 0; l < LANES; ++l) {
                const bool in = y < py1 && x0 + l < px1;
                const int64_t p = (c * H + y) * W + x0 + l;
                Tr[v][l] = Tfin[v][l] = in ? final_T[p] : T(1);
                last[v][l] = in ? last_in[p] : 0;
                va[v][l] = in && v_alpha ? v_alpha[p] : T(0);
                for (int d = 0; d < D; ++d) vimg[static_cast<size_t>(v) * D + d][l] = in && v_img ? v_img[p * D + d] : T(0);
                if (in) max_last = std::max(max_last, last_in[p]);
            }
        }
        for (int64_t j = start + max_last - 1; j >= start; --j) {
            const MI rank = static_cast<MI>(j - start);
            const T* rec = packed + static_cast<int64_t>(ids[j]) * R;
            const T o = rec[5], ca = rec[2], cb = rec[3], cc = rec[4];
            const T* f = rec + REC_HEAD;
            V gmx{}, gmy{}, gca{}, gcb{}, gcc{}, go{};
            std::fill(gf.begin(), gf.end(), V{});
            Visit<T> vs;
            if (!vs.init(rec, px0, py0, px1, py1)) continue;
            for (int v = vs.vb; v < vs.ve; v += vs.step) {  // branch-free phase, as in the forward
                V sig;
                vs.eval(v, vs.dy(v, py0, rec[1]), sig, viss[v]);
                oks[v] = o * viss[v] >= alpha_min;  // vis = 0 where sigma < 0
            }
            for (int v = vs.vb; v < vs.ve; v += vs.step) {
                {
                    const T dy = vs.dy(v, py0, rec[1]);
                    const M ok = oks[v] & (M{} + rank < last[v]);
                    if (!any(ok)) continue;
                    const V dx = vs.dx[v % HALVES];
                    const V vis = viss[v];
                    const V raw = o * vis;
                    const V alpha = select(raw < alpha_max, raw, V{} + alpha_max);
                    const V ra = T(1) / (T(1) - alpha);
                    const V Tn = select(ok, Tr[v] * ra, Tr[v]);  // transmittance in front of this Gaussian
                    Tr[v] = Tn;
                    const V w = select(ok, alpha * Tn, V{});
                    V* b = buf.data() + static_cast<size_t>(v) * D;
                    const V* vi = vimg.data() + static_cast<size_t>(v) * D;
                    V v_a = Tfin[v] * ra * va[v];
                    for (int d = 0; d < D; ++d) {
                        gf[d] = fmadd(w, vi[d], gf[d]);
                        v_a = fmadd(fmadd(V{} + f[d], Tn, -(b[d] * ra)), vi[d], v_a);
                        b[d] = fmadd(V{} + f[d], w, b[d]);
                    }
                    const M unclamped = ok & (raw <= alpha_max);
                    go += select(unclamped, vis * v_a, V{});
                    const V v_sigma = select(unclamped, -raw * v_a, V{});
                    const V sdx = v_sigma * dx;
                    gca = fmadd(sdx, dx, gca);  // halved after the loop
                    gcb = fmadd(sdx, V{} + dy, gcb);
                    gcc = fmadd(v_sigma, V{} + dy * dy, gcc);  // halved after the loop
                    gmx -= v_sigma * fmadd(V{} + ca, dx, V{} + cb * dy);
                    gmy -= v_sigma * fmadd(V{} + cb, dx, V{} + cc * dy);
                }
            }
            T* out = scratch + static_cast<size_t>(j) * stride;
            out[0] = hsum(gmx);
            out[1] = hsum(gmy);
            out[2] = T(0.5) * hsum(gca);
            out[3] = hsum(gcb);
            out[4] = T(0.5) * hsum(gcc);
            out[5] = hsum(go);
            for (int d = 0; d < D; ++d) out[6 + d] = hsum(gf[d]);
        }
    });
}

// Backward of the compositor. Per-intersection gradients go to a scratch buffer (each
// intersection belongs to one tile: no races), then each camera's are summed per Gaussian
// into g_* ([C*N, ...], zeroed here).
template <typename T>
void backward(int64_t C, int64_t N, int D, int W, int H, const T* packed, const int32_t* order,
              const int64_t* offsets, const int32_t* ids, const T* final_T, const int32_t* last_in,
              const T* v_img, const T* v_alpha, T* g_means2d, T* g_conics, T* g_feats, T* g_opac,
              int n_threads) {
    const int tx = (W + TILE - 1) / TILE, ty = (H + TILE - 1) / TILE;
    const int64_t nt = static_cast<int64_t>(tx) * ty;
    const int stride = 6 + D;  // per intersection: means2d (2), conic (3), opacity, feats (D)
    const int64_t n_isect = offsets[C * nt];
    std::vector<T> scratch(static_cast<size_t>(n_isect) * stride, T(0));
    if (D == 4)
        backward_tiles<T, 4>(C, D, W, H, packed, offsets, ids, final_T, last_in, v_img, v_alpha,
                             scratch.data(), n_threads);
    else
        backward_tiles<T, 0>(C, D, W, H, packed, offsets, ids, final_T, last_in, v_img, v_alpha,
                             scratch.data(), n_threads);
    // gather: camera c's intersections touch only camera c's Gaussians
    parallel_for(C, n_threads, [&](int64_t c) {
        std::fill(g_means2d + 2 * c * N, g_means2d + 2 * (c + 1) * N, T(0));
        std::fill(g_conics + 3 * c * N, g_conics + 3 * (c + 1) * N, T(0));
        std::fill(g_opac + c * N, g_opac + (c + 1) * N, T(0));
        std::fill(g_feats + D * c * N, g_feats + D * (c + 1) * N, T(0));
        for (int64_t j = offsets[c * nt]; j < offsets[(c + 1) * nt]; ++j) {
            const int64_t k = c * N + order[ids[j]];
            const T* in = scratch.data() + static_cast<size_t>(j) * stride;
            g_means2d[2 * k] += in[0];
            g_means2d[2 * k + 1] += in[1];
            g_conics[3 * k] += in[2];
            g_conics[3 * k + 1] += in[3];
            g_conics[3 * k + 2] += in[4];
            g_opac[k] += in[5];
            for (int d = 0; d < D; ++d) g_feats[D * k + d] += in[6 + d];
        }
    });
}

}  // namespace

extern "C" {

int ds4d_raster_abi_version() { return 10; }

#define DS4D_EXPORT(SUFFIX, T)                                                                   \
    void ds4d_project_##SUFFIX(const int64_t* dims, const int64_t* strides, const T* means,      \
                               const T* quats, const T* scales, const T* opac, const T* colors,  \
                               const T* viewmats, const T* Ks, T* means2d, T* conics, T* feats,  \
                               T* opac_c, int32_t* radii, int nt) {                              \
        ProjArgs a{dims[0], dims[1], int(dims[2]), int(dims[3]), int(dims[4]), int(dims[5]),      \
                   {strides[0], strides[1], strides[2], strides[3], strides[4]}};                \
        project_forward<T>(a, means, quats, scales, opac, colors, viewmats, Ks, means2d, conics,  \
                           feats, opac_c, radii, nt);                                            \
    }                                                                                            \
    void ds4d_project_backward_##SUFFIX(const int64_t* dims, const int64_t* strides,             \
                                        const T* means, const T* quats, const T* scales,         \
                                        const T* colors, const T* viewmats, const T* Ks,         \
                                        const T* v_m2, const T* v_con, const T* v_f,             \
                                        const T* v_o, T* g_means, T* g_quats, T* g_scales,       \
                                        T* g_opac, T* g_colors, int nt) {                        \
        ProjArgs a{dims[0], dims[1], int(dims[2]), int(dims[3]), int(dims[4]), int(dims[5]),      \
                   {strides[0], strides[1], strides[2], strides[3], strides[4]}};                \
        project_backward<T>(a, means, quats, scales, colors, viewmats, Ks, v_m2, v_con, v_f, v_o, \
                            g_means, g_quats, g_scales, g_opac, g_colors, nt);                   \
    }                                                                                            \
    int64_t ds4d_bin_##SUFFIX(int64_t C, int64_t N, int W, int H, const T* m, const int32_t* r,   \
                              const T* depths, int64_t depth_stride, int32_t* order,             \
                              int32_t* n_vis, int64_t* offsets, int nt) {                        \
        return bin<T>(C, N, W, H, m, r, depths, depth_stride, order, n_vis, offsets, nt);        \
    }                                                                                            \
    void ds4d_forward_##SUFFIX(int64_t C, int64_t N, int D, int W, int H, const T* m, const T* con, \
                               const T* f, const T* o, const int32_t* r, const int32_t* order,   \
                               const int32_t* n_vis, const int64_t* off, int32_t* ids,           \
                               T* packed, T* img, T* tr, int32_t* last, int64_t* stats, int nt) { \
        forward<T>(C, N, D, W, H, m, con, f, o, r, order, n_vis, off, ids, packed, img, tr, last, \
                   stats, nt);                                                                   \
    }                                                                                            \
    void ds4d_backward_##SUFFIX(int64_t C, int64_t N, int D, int W, int H, const T* packed,       \
                                const int32_t* order, const int64_t* off, const int32_t* ids,    \
                                const T* tr, const int32_t* last, const T* vimg, const T* va,    \
                                T* gm, T* gc, T* gf, T* go, int nt) {                            \
        backward<T>(C, N, D, W, H, packed, order, off, ids, tr, last, vimg, va, gm, gc, gf, go,   \
                    nt);                                                                         \
    }                                                                                            \
    int ds4d_record_size_##SUFFIX(int D) { return record_size(D); }

DS4D_EXPORT(f32, float)
DS4D_EXPORT(f64, double)

// Throughput probe for the benchmark's FLOP floor: independent vector multiply-adds (fused
// where the CPU has FMA, as the kernel's) on n_threads threads of the kernel's pool. Returns
// the floating-point operations done; the caller times the call.
double ds4d_probe_flops(int64_t iters, int n_threads) {
    typedef Simd<float>::V V;
    std::atomic<int64_t> sink{0};
    parallel_for(n_threads, n_threads, [&](int64_t t) {
        V a[12];
        for (int k = 0; k < 12; ++k) a[k] = V{} + float(t + k) * 1e-3f;
        const V m = V{} + 0.999f, c = V{} + 1e-3f;
        for (int64_t i = 0; i < iters; ++i)
            for (int k = 0; k < 12; ++k) a[k] = fmadd(a[k], m, c);
        float s = 0;
        for (int k = 0; k < 12; ++k) s += hsum(a[k]);
        sink += static_cast<int64_t>(s);
    });
    return double(n_threads) * double(iters) * 12 * LANES * 2 + 0 * double(sink.load());
}

}  // extern "C"
