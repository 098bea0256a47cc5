// CPU stand-ins for the CUDA built-ins that bpgpu's kernels use, so their real source compiles
// with g++ (tests/cuda_emu, never shipped). Raw kernels run one fiber (ucontext) per CUDA thread:
// a block's threads run one after another until each reaches a barrier (__syncthreads, or a warp
// shuffle for the threads of one warp), so code that exchanges values between threads sees what
// it would see on a GPU. Anything not defined here fails to compile: the emulation refuses what
// it does not model instead of guessing.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <string>
#include <vector>
#include <ucontext.h>
#include <cuda_fp16.h>   // the emulated one (tests/cuda_emu/include)

using std::exp; using std::log; using std::tanh; using std::fabs; using std::sqrt; using std::isfinite;

#define __global__
#define __device__
#define __forceinline__ inline

struct dim3 { unsigned int x = 1, y = 1, z = 1; };

namespace emu {

constexpr int kWarp = 32;
constexpr size_t kStack = 32 * 1024;

enum class Wait { none, warp, block, done };

struct Fiber {
    ucontext_t context;
    Wait wait = Wait::none;
    unsigned int tid = 0;
};

// Fiber stacks, allocated once per process (uninitialised) and reused by every launch.
inline char* stack_of(unsigned int thread) {
    static std::vector<char*> stacks;
    while (stacks.size() <= thread) stacks.push_back(new char[kStack]);
    return stacks[thread];
}

struct Block {
    std::vector<Fiber> fibers;
    ucontext_t scheduler;
    int current = -1;
    unsigned long long slots[1024];   // one exchange slot per thread for warp shuffles
    char error[256] = {0};
    void (*body)() = nullptr;
};

inline Block*& block() { static Block* b = nullptr; return b; }
inline dim3& thread_index() { static dim3 d; return d; }
inline dim3& block_index() { static dim3 d; return d; }
inline dim3& block_dim() { static dim3 d; return d; }
inline dim3& grid_dim() { static dim3 d; return d; }

inline void fail(const char* message) {
    Block* b = block();
    if (!b->error[0]) std::snprintf(b->error, sizeof b->error, "%s", message);
}

// Yield to the scheduler until the barrier of this kind releases this thread.
inline void barrier(Wait kind) {
    Block* b = block();
    if (b == nullptr) { std::fprintf(stderr, "emu: barrier outside a raw-kernel launch\n"); std::abort(); }
    Fiber& f = b->fibers[b->current];
    f.wait = kind;
    swapcontext(&f.context, &b->scheduler);
}

inline void trampoline() {
    Block* b = block();
    b->body();
    b->fibers[b->current].wait = Wait::done;
    swapcontext(&b->fibers[b->current].context, &b->scheduler);
}

// Run one block: every thread as a fiber, releasing barriers when all live threads they concern
// have reached them. Returns false (with b->error set) on a deadlock or a refused pattern.
inline bool run_block(Block* b, unsigned int threads) {
    b->fibers.resize(threads);
    for (unsigned int t = 0; t < threads; ++t) {
        Fiber& f = b->fibers[t];
        f.wait = Wait::none;
        f.tid = t;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = stack_of(t);
        f.context.uc_stack.ss_size = kStack;
        f.context.uc_link = nullptr;
        makecontext(&f.context, trampoline, 0);
    }
    for (;;) {
        bool ran = false;
        for (unsigned int t = 0; t < threads; ++t) {
            Fiber& f = b->fibers[t];
            if (f.wait != Wait::none) continue;
            b->current = (int)t;
            thread_index().x = t;
            swapcontext(&b->scheduler, &f.context);
            ran = true;
            if (b->error[0]) return false;
        }
        if (ran) continue;
        bool all_done = true, released = false;
        for (unsigned int t = 0; t < threads; ++t) all_done &= b->fibers[t].wait == Wait::done;
        if (all_done) return true;
        // Warp barriers: every live lane of the warp waits at a shuffle.
        for (unsigned int w = 0; w * kWarp < threads; ++w) {
            unsigned int lo = w * kWarp, hi = lo + kWarp < threads ? lo + kWarp : threads;
            unsigned int waiting = 0, done = 0;
            for (unsigned int t = lo; t < hi; ++t) {
                waiting += b->fibers[t].wait == Wait::warp;
                done += b->fibers[t].wait == Wait::done;
            }
            if (waiting && waiting + done == hi - lo) {
                if (done) { fail("warp shuffle with a full mask while some lanes have exited"); return false; }
                for (unsigned int t = lo; t < hi; ++t) b->fibers[t].wait = Wait::none;
                released = true;
            }
        }
        if (!released) {
            unsigned int waiting = 0, done = 0;
            for (unsigned int t = 0; t < threads; ++t) {
                waiting += b->fibers[t].wait == Wait::block;
                done += b->fibers[t].wait == Wait::done;
            }
            if (waiting && waiting + done == threads) {
                for (unsigned int t = 0; t < threads; ++t)
                    if (b->fibers[t].wait == Wait::block) b->fibers[t].wait = Wait::none;
                released = true;
            }
        }
        if (!released) { fail("deadlock: threads wait at barriers that can never release"); return false; }
    }
}

}  // namespace emu

#define threadIdx (emu::thread_index())
#define blockIdx (emu::block_index())
#define blockDim (emu::block_dim())
#define gridDim (emu::grid_dim())

inline void __syncthreads() { emu::barrier(emu::Wait::block); }

template <class T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a type wider than 8 bytes");
    emu::Block* b = emu::block();
    if (mask != 0xffffffffu || width != 32) {
        emu::fail("warp shuffle with a partial mask or width: not modelled");
        emu::barrier(emu::Wait::warp);
        return value;
    }
    unsigned int tid = threadIdx.x;
    std::memcpy(&b->slots[tid], &value, sizeof(T));
    emu::barrier(emu::Wait::warp);                  // every lane has published its value
    unsigned int source = (tid & ~31u) | ((tid & 31u) ^ (unsigned int)lane_mask);
    T result;
    std::memcpy(&result, &b->slots[source], sizeof(T));
    emu::barrier(emu::Wait::warp);                  // every lane has read before any writes again
    return result;
}

inline float __int_as_float(int bits) { float f; std::memcpy(&f, &bits, 4); return f; }
inline double __longlong_as_double(long long bits) { double d; std::memcpy(&d, &bits, 8); return d; }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

// C type names the Python side checks arguments against.
template <class T> struct emu_name { static constexpr const char* value = "?"; };
template <> struct emu_name<float> { static constexpr const char* value = "float32"; };
template <> struct emu_name<double> { static constexpr const char* value = "float64"; };
template <> struct emu_name<__half> { static constexpr const char* value = "float16"; };
template <> struct emu_name<int> { static constexpr const char* value = "int32"; };
template <> struct emu_name<long long> { static constexpr const char* value = "int64"; };
template <> struct emu_name<unsigned long long> { static constexpr const char* value = "uint64"; };

template <class P> std::string emu_describe_one() {
    using D = std::decay_t<P>;
    if constexpr (std::is_pointer_v<D>)
        return std::string("*") + emu_name<std::remove_cv_t<std::remove_pointer_t<D>>>::value;
    else
        return emu_name<std::remove_cv_t<D>>::value;
}

template <class... P> std::string emu_describe(void (*)(P...)) {
    std::string out;
    ((out += emu_describe_one<P>() + ","), ...);
    return out;
}

template <class... P, size_t... I>
void emu_call(void (*f)(P...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::decay_t<P>*>(args[I])...);
}

// One launch of a raw kernel: blocks one after another, each block's threads as fibers.
template <class... P>
int emu_launch(void (*f)(P...), void** args, const unsigned int* grid, const unsigned int* block,
               char* error, size_t error_size) {
    if (grid[1] != 1 || grid[2] != 1 || block[1] != 1 || block[2] != 1) {
        std::snprintf(error, error_size, "only 1-D grids and blocks are modelled");
        return 1;
    }
    if (block[0] == 0 || block[0] > 1024 || grid[0] == 0) {
        std::snprintf(error, error_size, "invalid launch: grid %u, block %u", grid[0], block[0]);
        return 1;
    }
    static void (*kernel)(P...);
    static void** kernel_args;
    kernel = f;
    kernel_args = args;
    emu::Block b;
    emu::block() = &b;
    b.body = [] { emu_call(kernel, kernel_args, std::index_sequence_for<P...>{}); };
    emu::grid_dim().x = grid[0];
    emu::block_dim().x = block[0];
    int status = 0;
    for (unsigned int g = 0; g < grid[0] && status == 0; ++g) {
        emu::block_index().x = g;
        if (!emu::run_block(&b, block[0])) {
            std::snprintf(error, error_size, "block %u: %s", g, b.error);
            status = 1;
        }
    }
    emu::block() = nullptr;
    return status;
}
