// The kernels' persistent thread pool, shared by every source of the library (raster.cpp,
// ssim.cpp): one set of helper threads per process, whichever kernel runs.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <vector>

namespace ds4d {

// A persistent pool of helper threads. The caller takes part in every job and waits only for
// items that were claimed, never for a helper to wake up: on a busy machine a helper that is
// not scheduled in time simply finds no work left, instead of stalling the render (spawning
// and joining threads per call cost milliseconds of wall time under load). Helpers are
// started lazily and sleep on a condition variable between jobs.
class Pool {
  public:
    template <typename F>
    void run(int64_t n_items, int n_threads, F& fn) {
        thread_local bool inside = false;  // a nested call runs serially in its item
        std::unique_lock<std::mutex> busy(submit_, std::defer_lock);
        if (inside || n_threads <= 1 || n_items <= 1 || !busy.try_lock()) {  // or another caller's job runs
            for (int64_t i = 0; i < n_items; ++i) fn(i);
            return;
        }
        inside = true;
        auto job = std::make_shared<Job>();
        job->n = n_items;
        job->fn = [&fn](int64_t i) { fn(i); };
        {
            std::lock_guard<std::mutex> lock(m_);
            while (static_cast<int>(workers_.size()) < std::min(n_threads, 64) - 1)
                workers_.emplace_back([this] { loop(); });
            job_ = job;
            wanted_ = std::min<int64_t>(n_threads, n_items) - 1;
            ++generation_;
        }
        cv_.notify_all();
        work(*job);
        for (int spins = 0; job->done.load(std::memory_order_acquire) < n_items; ++spins) {
            if (spins > 64) std::this_thread::yield();
        }
        std::lock_guard<std::mutex> lock(m_);
        job_.reset();
        inside = false;
    }

  private:
    struct Job {
        std::function<void(int64_t)> fn;
        int64_t n = 0;
        std::atomic<int64_t> next{0}, done{0};
    };

    static void work(Job& job) {
        for (int64_t i = job.next.fetch_add(1); i < job.n; i = job.next.fetch_add(1)) {
            job.fn(i);
            job.done.fetch_add(1, std::memory_order_release);
        }
    }

    void loop() {
        uint64_t seen = 0;
        for (;;) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(m_);
                cv_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                if (wanted_ <= 0) continue;  // enough helpers for this job
                --wanted_;
                job = job_;
            }
            if (job) work(*job);  // a late helper finds every item claimed and goes back to sleep
        }
    }

    std::mutex submit_, m_;
    std::condition_variable cv_;
    std::vector<std::thread> workers_;
    std::shared_ptr<Job> job_;
    int64_t wanted_ = 0;
    uint64_t generation_ = 0;
};

// Never destroyed: helpers may still sleep at exit. A forked child gets a fresh pool (the
// parent's helpers do not exist there, and a mutex could have been copied while held); the
// old one is leaked on purpose, since destroying a std::thread that was never joined aborts.
inline Pool* g_pool = nullptr;
inline std::once_flag g_pool_once;

inline Pool& pool() {
    std::call_once(g_pool_once, [] {
        g_pool = new Pool;
        pthread_atfork(nullptr, nullptr, [] { g_pool = new Pool; });
    });
    return *g_pool;
}

template <typename F>
void parallel_for(int64_t n_items, int n_threads, F&& fn) {
    pool().run(n_items, n_threads, fn);
}

// Runs fn(begin, end) over [0, n) in chunks of at least `grain` (few items: one thread).
template <typename F>
void parallel_range(int64_t n, int64_t grain, int n_threads, F&& fn) {
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(n / std::max<int64_t>(grain, 1),
                                                                  int64_t(n_threads) * 4));
    const int64_t step = (n + chunks - 1) / chunks;
    parallel_for(chunks, n_threads, [&](int64_t i) {
        const int64_t b = i * step, e = std::min(n, b + step);
        if (b < e) fn(b, e);
    });
}

}  // namespace ds4d
