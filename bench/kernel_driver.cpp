// One CPU render (forward + backward) through the C++ kernel alone, for bench_render.py.
//
// Reads a scene written by bench_render.py (raw float32 tensors and a meta file), then calls the
// kernel's five stages in the order ds4d_cli/render/cpu.py does, with the benchmark's loss
// (sum of rgb and alpha: v_img = (1, 1, 1, 0), v_alpha = 1). Under
// `valgrind --tool=callgrind --toggle-collect=ds4d_render_once` it counts the instructions of
// exactly one render, a figure the machine's load cannot disturb; run natively it prints the
// kernel's own CPU time per render (no Python, no torch).
//
//   kernel_driver SCENE_DIR REPS THREADS
//
// Built by bench_render.py with the kernel's flags; includes the kernel source directly.

#include KERNEL_SOURCE

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <string>

namespace {

template <typename X>
std::vector<X> load(const std::string& path, size_t n) {
    std::vector<X> v(n);
    std::ifstream f(path, std::ios::binary);
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(X)));
    if (!f) {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        std::exit(2);
    }
    return v;
}

double cpu_seconds() {
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

struct Scene {
    int64_t dims[6];     // C, N, W, H, sh_degree (-1: RGB), SH coefficients
    int64_t strides[5];  // camera strides of means, quats, scales, opacities, colours (0 = shared)
    std::vector<float> means, quats, scales, opac, colors, viewmats, Ks;
};

}  // namespace

extern "C" __attribute__((noinline)) void ds4d_render_once(const Scene& s, int n_threads) {
    const int64_t C = s.dims[0], N = s.dims[1];
    const int W = int(s.dims[2]), H = int(s.dims[3]), D = 4;
    std::vector<float> m2(C * N * 2), con(C * N * 3), feats(C * N * D), opc(C * N);
    std::vector<int32_t> radii(C * N * 2);
    ds4d_project_f32(s.dims, s.strides, s.means.data(), s.quats.data(), s.scales.data(), s.opac.data(),
                     s.colors.data(), s.viewmats.data(), s.Ks.data(), m2.data(), con.data(), feats.data(),
                     opc.data(), radii.data(), n_threads);
    const int64_t nt = int64_t((W + 15) / 16) * ((H + 15) / 16);
    std::vector<int32_t> order(C * N), n_vis(C);
    std::vector<int64_t> offsets(C * nt + 1);
    const int64_t total = ds4d_bin_f32(C, N, W, H, m2.data(), radii.data(), feats.data() + 3, 4, order.data(),
                                       n_vis.data(), offsets.data(), n_threads);
    std::vector<int32_t> ids(total), last(C * H * W);
    std::vector<float> packed(C * N * ds4d_record_size_f32(D)), img(C * H * W * D), trans(C * H * W);
    ds4d_forward_f32(C, N, D, W, H, m2.data(), con.data(), feats.data(), opc.data(), radii.data(), order.data(),
                     n_vis.data(), offsets.data(), ids.data(), packed.data(), img.data(), trans.data(), last.data(),
                     nullptr, n_threads);
    std::vector<float> v_img(C * H * W * D), v_alpha(C * H * W, 1.0f);
    for (size_t p = 0; p < v_img.size(); ++p) v_img[p] = (p % D) < 3 ? 1.0f : 0.0f;
    // the alpha output is 1 - T, so its gradient reaches the compositor as is
    std::vector<float> g_m2(C * N * 2), g_con(C * N * 3), g_f(C * N * D), g_o(C * N);
    ds4d_backward_f32(C, N, D, W, H, packed.data(), order.data(), offsets.data(), ids.data(), trans.data(),
                      last.data(), v_img.data(), v_alpha.data(), g_m2.data(), g_con.data(), g_f.data(), g_o.data(),
                      n_threads);
    std::vector<float> gm(s.means.size()), gq(s.quats.size()), gs(s.scales.size()), go(s.opac.size()),
        gc(s.colors.size());
    ds4d_project_backward_f32(s.dims, s.strides, s.means.data(), s.quats.data(), s.scales.data(), s.colors.data(),
                              s.viewmats.data(), s.Ks.data(), g_m2.data(), g_con.data(), g_f.data(), g_o.data(),
                              gm.data(), gq.data(), gs.data(), go.data(), gc.data(), n_threads);
}

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s SCENE_DIR REPS THREADS\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const int reps = std::atoi(argv[2]), n_threads = std::atoi(argv[3]);
    Scene s;
    {
        std::ifstream meta(dir + "/meta");
        for (auto& d : s.dims) meta >> d;
        for (auto& st : s.strides) meta >> st;
        if (!meta) {
            std::fprintf(stderr, "bad meta file in %s\n", dir.c_str());
            return 2;
        }
    }
    const int64_t C = s.dims[0], N = s.dims[1];
    const int64_t k_sh = s.dims[4] < 0 ? 1 : s.dims[5];
    auto size = [&](int64_t stride, int64_t per) { return size_t(stride ? C * N * per : N * per); };
    s.means = load<float>(dir + "/means.bin", size(s.strides[0], 3));
    s.quats = load<float>(dir + "/quats.bin", size(s.strides[1], 4));
    s.scales = load<float>(dir + "/scales.bin", size(s.strides[2], 3));
    s.opac = load<float>(dir + "/opacities.bin", size(s.strides[3], 1));
    s.colors = load<float>(dir + "/colors.bin", size(s.strides[4], 3 * k_sh));
    s.viewmats = load<float>(dir + "/viewmats.bin", size_t(C * 16));
    s.Ks = load<float>(dir + "/Ks.bin", size_t(C * 9));
    ds4d_render_once(s, n_threads);  // warm-up (thread pool, page faults)
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const double t0 = cpu_seconds();
        ds4d_render_once(s, n_threads);
        best = std::min(best, cpu_seconds() - t0);
    }
    std::printf("RESULT {\"kernel_cpu_s\": %.6f}\n", best);
    return 0;
}
