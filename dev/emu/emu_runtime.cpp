// dev/emu/emu_runtime.cpp — the host emulator's runtime (dev/emu/README.md):
// kernel launches (blocks one after another, each block's threads as emulated
// threads that interleave at barriers), barriers and warp shuffles with
// divergence checks, queued streams, and "device" memory with guard bands.
//
// Two ways to run a block's threads, with the same barrier bookkeeping:
//   fibers (default)  one stack per emulated thread on the launching OS
//                     thread, switched only at barriers and shuffles (a few
//                     nanoseconds per switch on x86-64, ucontext elsewhere),
//                     so whole test suites run in seconds;
//   OS threads        one std::thread per emulated thread, barriers on a mutex
//                     and condition variable: truly concurrent, so
//                     ThreadSanitizer reports shared-memory races between
//                     barriers. Chosen by GEOPREF_EMU_THREADS=1 and always
//                     under ThreadSanitizer.
// Environment: GEOPREF_EMU_ORDER=reverse runs blocks, and fibers between
// barriers, last to first (a missing barrier then shows as a wrong result);
// GEOPREF_EMU_EAGER=1 runs stream work when it is enqueued;
// GEOPREF_EMU_ABORT=1 aborts at the first fault (for a debugger).
#include <cuda_runtime.h>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define GEOPREF_EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define GEOPREF_EMU_TSAN 1
#endif

struct CUstream_st {
  unsigned int flags;
};

namespace cuda_emu {
namespace {

bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == value;
}

// ---------------------------------------------------------------------------
// Errors. One slot, as a launch failure in CUDA: set by a failed launch or a
// corrupted guard band, returned (and cleared) by cudaGetLastError or by the
// next synchronising call.
std::recursive_mutex g_api_mutex;  // everything below; kernels run with it held by the host thread
cudaError_t g_error = cudaSuccess;

void set_error(cudaError_t e) {
  if (g_error == cudaSuccess) g_error = e;
}
cudaError_t take_error() {
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}

void report(const std::string& msg) {
  std::fprintf(stderr, "geopref emulator: %s\n", msg.c_str());
  std::fflush(stderr);
  if (env_is("GEOPREF_EMU_ABORT", "1")) std::abort();
}

// ---------------------------------------------------------------------------
// Device memory: [guard | user bytes | guard], the base 256-byte aligned as
// cudaMalloc's is. User bytes start as 0xff (NaN, −1); guards hold 0xa5 and
// are poisoned for AddressSanitizer, which then reports any access at once;
// without it, writes into a guard are found after every launch, on
// synchronisation and on cudaFree.
constexpr size_t GUARD = 256;
constexpr unsigned char GUARD_BYTE = 0xa5;

struct allocation {
  unsigned char* base;  // what operator new returned
  size_t bytes;         // user bytes
};
std::map<uintptr_t, allocation> g_allocs;  // by user address
std::set<CUstream_st*> g_streams;

unsigned char* user_ptr(const allocation& a) { return a.base + GUARD; }

bool guards_intact(const allocation& a) {
  const unsigned char* u = user_ptr(a);
#if GEOPREF_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(u - GUARD, GUARD);
  ASAN_UNPOISON_MEMORY_REGION(u + a.bytes, GUARD);
#endif
  bool ok = true;
  for (size_t i = 0; i < GUARD; ++i) ok = ok && u[-1 - static_cast<ptrdiff_t>(i)] == GUARD_BYTE && u[a.bytes + i] == GUARD_BYTE;
#if GEOPREF_EMU_ASAN
  ASAN_POISON_MEMORY_REGION(u - GUARD, GUARD);
  ASAN_POISON_MEMORY_REGION(u + a.bytes, GUARD);
#endif
  return ok;
}

/// Checks every live allocation's guards (caller holds g_api_mutex).
bool check_all_guards(const char* when) {
  bool ok = true;
  for (const auto& [addr, a] : g_allocs) {
    if (!guards_intact(a)) {
      char buf[200];
      std::snprintf(buf, sizeof buf, "%s: a write outside device allocation %#zx (%zu bytes)", when,
                    static_cast<size_t>(addr), a.bytes);
      report(buf);
      set_error(cudaErrorLaunchFailure);
      ok = false;
    }
  }
  return ok;
}

/// True when [p, p + n) lies inside one live allocation (caller holds the lock).
bool inside_allocation(const void* p, size_t n) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(addr);
  if (it == g_allocs.begin()) return false;
  --it;
  return addr >= it->first && addr - it->first <= it->second.bytes &&
         n <= it->second.bytes - (addr - it->first);
}

bool valid_stream(cudaStream_t s) { return s == nullptr || g_streams.count(s) != 0; }

// ---------------------------------------------------------------------------
// Streams. Work is queued, not run: an operation runs only when the host must
// see its effect (stream or device synchronisation, a copy into host memory,
// cudaFree), together with the work it is ordered after. Work that CUDA
// leaves unordered runs latest first, so a missing synchronisation between
// streams changes results here instead of passing by luck. Ordering as in
// CUDA: each stream in order; the legacy default stream (nullptr) and the
// blocking streams wait for each other; non-blocking streams wait for
// nothing else. GEOPREF_EMU_EAGER=1 runs everything at once instead.
struct operation {
  std::vector<uint64_t> after;  // operations that must run first
  std::function<void()> run;
};
std::map<uint64_t, operation> g_pending;  // by enqueue order
std::map<CUstream_st*, uint64_t> g_last;  // the last operation of each stream
uint64_t g_next_op = 1;

void run_op(uint64_t id) {
  const auto it = g_pending.find(id);
  if (it == g_pending.end()) return;  // already ran
  operation op = std::move(it->second);
  g_pending.erase(it);
  for (uint64_t d : op.after) run_op(d);
  op.run();
}

uint64_t enqueue(cudaStream_t s, std::function<void()> fn) {
  operation op;
  op.run = std::move(fn);
  auto after_last_of = [&](CUstream_st* t) {
    const auto it = g_last.find(t);
    if (it != g_last.end() && g_pending.count(it->second) != 0) op.after.push_back(it->second);
  };
  after_last_of(s);
  if (s == nullptr) {
    for (CUstream_st* t : g_streams)
      if (t->flags == cudaStreamDefault) after_last_of(t);
  } else if (s->flags == cudaStreamDefault) {
    after_last_of(nullptr);
  }
  const uint64_t id = g_next_op++;
  g_pending.emplace(id, std::move(op));
  g_last[s] = id;
  if (env_is("GEOPREF_EMU_EAGER", "1")) run_op(id);
  return id;
}

void run_stream(cudaStream_t s) {
  const auto it = g_last.find(s);
  if (it != g_last.end()) run_op(it->second);
}

void run_all() {
  while (!g_pending.empty()) run_op(g_pending.rbegin()->first);  // latest first
}

// ---------------------------------------------------------------------------
// Barrier bookkeeping of one block, shared by both ways of running it. A
// group is the block (__syncthreads) or one warp (shuffles). A barrier is
// complete when every thread of the group has arrived; a thread that returns
// while others of its group wait, or arrives after others returned, is a
// fault (CUDA requires barriers to be reached by the whole block / warp).

struct emu_fault {};  // thrown inside an emulated thread to unwind it

struct group {
  int size = 0, arrived = 0, exited = 0;
  unsigned gen = 0;  // completed barriers
};

constexpr size_t SLOT = 16;  // bytes per lane of a shuffle buffer

struct block_run {
  const std::function<void()>* body = nullptr;
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  int nthreads = 0;
  group block;
  std::vector<group> warps;
  std::vector<unsigned> shuffles;      // per thread: shuffles done (picks the buffer half)
  std::vector<unsigned char> exch;     // [warps][2][32][SLOT] shuffle buffers
  std::vector<unsigned char> exch_n;   // [warps][2][32] bytes each lane published
  int blocked = 0;                     // threads waiting at a barrier
  bool aborted = false;
  std::string fault;

  group& warp_of(int tid) { return warps[static_cast<size_t>(tid / 32)]; }

  void abort_with(const std::string& what, int tid) {
    if (aborted) return;
    aborted = true;
    fault = "thread " + std::to_string(tid) + ": " + what;
  }

  /// Thread `tid` arrives at g. Returns true when it completes the barrier.
  bool arrive(group& g, int tid) {
    ++g.arrived;
    if (g.arrived + g.exited < g.size) return false;
    if (g.exited > 0) {
      abort_with(&g == &block ? "__syncthreads reached after other threads of the block returned"
                              : "warp shuffle reached after other lanes of the warp returned",
                 tid);
      return false;
    }
    blocked -= g.arrived - 1;  // the others wake up
    g.arrived = 0;
    ++g.gen;
    return true;
  }

  /// Thread `tid` returned from the kernel.
  void exit(int tid) {
    for (group* g : {&block, &warp_of(tid)}) {
      ++g->exited;
      if (g->arrived > 0 && g->arrived + g->exited == g->size)
        abort_with(g == &block ? "returned while other threads of the block wait at __syncthreads"
                               : "returned while other lanes of the warp wait at a shuffle",
                   tid);
    }
  }
};

// The emulated thread that is running (per OS thread; the fiber scheduler
// sets it before it resumes a fiber).
thread_local block_run* t_block = nullptr;
thread_local int t_tid = 0;

void enter_thread(block_run& b, int tid) {
  t_block = &b;
  t_tid = tid;
  const dim3 d = b.block_dim;
  threadIdx = {static_cast<unsigned>(tid) % d.x, static_cast<unsigned>(tid) / d.x % d.y,
               static_cast<unsigned>(tid) / (d.x * d.y)};
  blockIdx = b.block_idx;
  blockDim = b.block_dim;
  gridDim = b.grid_dim;
}

// ---------------------------------------------------------------------------
// OS threads.
class thread_runner {
 public:
  void run(block_run& b) {
    b_ = &b;
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(b.nthreads));
    for (int tid = 0; tid < b.nthreads; ++tid)
      threads.emplace_back([this, &b, tid] {
        enter_thread(b, tid);
        try {
          (*b.body)();
        } catch (const emu_fault&) {
        }
        std::lock_guard<std::mutex> lock(mu_);
        b.exit(tid);
        if (b.blocked > 0 && b.blocked + b.block.exited == b.nthreads)
          b.abort_with("every thread waits at a barrier that cannot complete (divergent barriers)", tid);
        if (b.aborted) cv_.notify_all();
      });
    for (auto& t : threads) t.join();
  }

  void wait(group& g) {
    block_run& b = *b_;
    std::unique_lock<std::mutex> lock(mu_);
    if (b.aborted) throw emu_fault{};
    const unsigned gen = g.gen;
    if (b.arrive(g, t_tid)) {
      cv_.notify_all();
      return;
    }
    ++b.blocked;
    if (!b.aborted && b.blocked + b.block.exited == b.nthreads)
      b.abort_with("every thread waits at a barrier that cannot complete (divergent barriers)", t_tid);
    if (b.aborted) {
      cv_.notify_all();
      throw emu_fault{};
    }
    cv_.wait(lock, [&] { return g.gen != gen || b.aborted; });
    if (b.aborted) throw emu_fault{};
  }

  [[noreturn]] void fail(const std::string& what) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      b_->abort_with(what, t_tid);
    }
    cv_.notify_all();
    throw emu_fault{};
  }

 private:
  block_run* b_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
};

// ---------------------------------------------------------------------------
// Fiber contexts. On x86-64 a switch is a dozen instructions (callee-saved
// registers and the FP control words pushed on the old stack, the stack
// pointer swapped); elsewhere ucontext, which costs a system call per switch.
#if defined(__x86_64__) && !defined(GEOPREF_EMU_UCONTEXT)
extern "C" void geopref_emu_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .globl geopref_emu_switch
  .type geopref_emu_switch, @function
geopref_emu_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size geopref_emu_switch, .-geopref_emu_switch
)");

struct context {
  void* sp = nullptr;
};
/// Prepares `c` to start `fn` on the stack [bottom, bottom + size).
void make_context(context& c, void* bottom, size_t size, void (*fn)()) {
  auto top = (reinterpret_cast<uintptr_t>(bottom) + size) & ~uintptr_t{15};
  auto* p = reinterpret_cast<uint64_t*>(top);
  *--p = 0;                                // fn's return address: none (unwinding stops)
  *--p = reinterpret_cast<uint64_t>(fn);   // where the first switch returns to
  for (int i = 0; i < 6; ++i) *--p = 0;    // rbp rbx r12 r13 r14 r15
  *--p = 0x037f00001f80ull;                // default MXCSR, x87 control word
  c.sp = p;
}
void swap_context(context& from, context& to) { geopref_emu_switch(&from.sp, to.sp); }
#else
struct context {
  ucontext_t uc{};
};
void make_context(context& c, void* bottom, size_t size, void (*fn)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = bottom;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fn, 0);
}
void swap_context(context& from, context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---------------------------------------------------------------------------
// Fibers: every emulated thread runs on its own stack on the launching OS
// thread; the scheduler resumes each ready fiber in turn until it reaches a
// barrier (or returns). No fiber is ready while some have not returned: a
// deadlock, reported as divergent barriers.
class fiber_runner {
 public:
  ~fiber_runner() {
    for (void* s : stacks_) munmap(s, STACK + PAGE);
  }

  void run(block_run& b, bool reverse) {
    b_ = &b;
    const auto n = static_cast<size_t>(b.nthreads);
    while (stacks_.size() < n) {
      void* s = mmap(nullptr, STACK + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (s == MAP_FAILED) {
        b.abort_with("out of memory for fiber stacks", 0);
        return;
      }
      mprotect(s, PAGE, PROT_NONE);  // overflow guard
      stacks_.push_back(s);
    }
    fibers_.assign(n, fiber{});
    for (size_t i = 0; i < n; ++i) make_context(fibers_[i].ctx, stack_bottom(i), STACK, &fiber_runner::entry);
    current_ = this;
    size_t done = 0;
    while (done < n) {
      bool ran = false;
      for (size_t k = 0; k < n; ++k) {
        const size_t i = reverse ? n - 1 - k : k;
        fiber& f = fibers_[i];
        if (f.state != READY) continue;
        ran = true;
        f.state = RUNNING;
        enter_thread(b, static_cast<int>(i));
        switch_to(f.ctx, stack_bottom(i));
        if (f.state == DONE) ++done;
      }
      if (!ran && done < n) {
        b.abort_with("every thread waits at a barrier that cannot complete (divergent barriers)", -1);
        release_all();  // they unwind
      }
    }
  }

  void wait(group& g) {
    block_run& b = *b_;
    if (b.aborted) throw emu_fault{};
    if (b.arrive(g, t_tid)) {
      for (fiber& f : fibers_)
        if (f.state == WAITING && f.waiting == &g) f.state = READY;
      return;
    }
    if (b.aborted) {
      release_all();
      throw emu_fault{};
    }
    fiber& me = fibers_[static_cast<size_t>(t_tid)];
    me.state = WAITING;
    me.waiting = &g;
    ++b.blocked;
    switch_to_scheduler(me.ctx, false);
    if (b.aborted) throw emu_fault{};
  }

  [[noreturn]] void fail(const std::string& what) {
    b_->abort_with(what, t_tid);
    release_all();
    throw emu_fault{};
  }

 private:
  static constexpr size_t PAGE = 4096, STACK = 256 * 1024;
  enum state_t { READY, RUNNING, WAITING, DONE };
  struct fiber {
    context ctx;
    state_t state = READY;
    const group* waiting = nullptr;
  };

  void* stack_bottom(size_t i) const { return static_cast<char*>(stacks_[i]) + PAGE; }

  static void entry() {
    fiber_runner* self = current_;
    self->finish_switch();
    block_run& b = *self->b_;
    const int tid = t_tid;
    try {
      (*b.body)();
    } catch (const emu_fault&) {
    }
    b.exit(tid);
    if (b.aborted) self->release_all();
    fiber& me = self->fibers_[static_cast<size_t>(tid)];
    me.state = DONE;
    self->switch_to_scheduler(me.ctx, true);  // never resumed
    std::abort();
  }

  void release_all() {
    for (fiber& f : fibers_)
      if (f.state == WAITING) f.state = READY;
  }

  // AddressSanitizer is told which stack is current (it unpoisons a stack
  // that an exception unwinds, and checks stack accesses against it).
  void switch_to(context& to, void* bottom) {
#if GEOPREF_EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, bottom, STACK);
    swap_context(sched_, to);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    (void)bottom;
    swap_context(sched_, to);
#endif
  }
  void switch_to_scheduler(context& from, bool last) {
#if GEOPREF_EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(last ? nullptr : &fake, sched_bottom_, sched_size_);
    swap_context(from, sched_);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    (void)last;
    swap_context(from, sched_);
#endif
  }
  void finish_switch() {
#if GEOPREF_EMU_ASAN
    const void* bottom = nullptr;
    size_t size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
    sched_bottom_ = bottom;
    sched_size_ = size;
#endif
  }

  static inline thread_local fiber_runner* current_ = nullptr;
  block_run* b_ = nullptr;
  context sched_;
  std::vector<void*> stacks_;
  std::vector<fiber> fibers_;
  const void* sched_bottom_ = nullptr;
  size_t sched_size_ = 0;
};

bool use_threads() {
#if GEOPREF_EMU_TSAN
  return true;
#else
  return env_is("GEOPREF_EMU_THREADS", "1");
#endif
}

thread_runner* g_threads = nullptr;
fiber_runner* g_fibers = nullptr;

void wait_at(group& g) {
  if (g_threads != nullptr) g_threads->wait(g);
  else g_fibers->wait(g);
}

}  // namespace

namespace {

/// Runs every block of a launch, one after another.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread_body) {
  const bool reverse = env_is("GEOPREF_EMU_ORDER", "reverse");
  thread_runner threads;
  static thread_local fiber_runner fibers;  // keeps its stacks between launches
  g_threads = use_threads() ? &threads : nullptr;
  g_fibers = &fibers;

  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
  std::string fault;
  for (unsigned long long k = 0; k < nblocks && fault.empty(); ++k) {
    const unsigned long long i = reverse ? nblocks - 1 - k : k;
    block_run b;
    b.body = &thread_body;
    b.block_idx = {static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                   static_cast<unsigned>(i / (1ull * grid.x * grid.y))};
    b.block_dim = block;
    b.grid_dim = grid;
    b.nthreads = nthreads;
    b.block.size = nthreads;
    const int nwarps = (nthreads + 31) / 32;
    b.warps.resize(static_cast<size_t>(nwarps));
    for (int w = 0; w < nwarps; ++w) b.warps[static_cast<size_t>(w)].size = std::min(32, nthreads - 32 * w);
    b.shuffles.assign(static_cast<size_t>(nthreads), 0);
    b.exch.assign(static_cast<size_t>(nwarps) * 2 * 32 * SLOT, 0);
    b.exch_n.assign(static_cast<size_t>(nwarps) * 2 * 32, 0);
    if (g_threads != nullptr) threads.run(b);
    else fibers.run(b, reverse);
    if (b.aborted)
      fault = "kernel fault in block (" + std::to_string(b.block_idx.x) + ", " +
              std::to_string(b.block_idx.y) + ", " + std::to_string(b.block_idx.z) + ") of grid (" +
              std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " + std::to_string(grid.z) +
              ") x block (" + std::to_string(block.x) + ", " + std::to_string(block.y) + ", " +
              std::to_string(block.z) + "): " + b.fault;
  }
  g_threads = nullptr;
  t_block = nullptr;
  if (!fault.empty()) {
    report(fault);
    set_error(cudaErrorLaunchFailure);
  }
  check_all_guards("after a kernel launch");
}

}  // namespace

// ---------------------------------------------------------------------------
void launch(dim3 grid, dim3 block, cudaStream_t stream, std::function<void()> thread_body) {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  if (!valid_stream(stream)) {
    set_error(cudaErrorInvalidResourceHandle);
    return;
  }
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration);
    return;
  }
  enqueue(stream, [grid, block, body = std::move(thread_body)] { run_grid(grid, block, body); });
}

void sync_block() {
  if (t_block == nullptr) fault("__syncthreads outside a kernel");
  wait_at(t_block->block);
}

int lane_id() { return t_tid % 32; }

void warp_exchange(const void* in, void* out, size_t bytes, unsigned int mask, int src_lane) {
  block_run* b = t_block;
  if (b == nullptr) fault("warp shuffle outside a kernel");
  if (mask != 0xffffffffu) fault("warp shuffle with a mask other than 0xffffffff");
  if (b->warp_of(t_tid).size != 32) fault("warp shuffle in a partial warp");
  // Two buffers alternate, so one barrier per shuffle suffices: a lane writes
  // buffer q again only after the next barrier, which every reader of q has
  // reached after reading.
  const size_t w = static_cast<size_t>(t_tid / 32), lane = static_cast<size_t>(t_tid % 32);
  const size_t half = b->shuffles[static_cast<size_t>(t_tid)]++ & 1u;
  const size_t base = (w * 2 + half) * 32;
  std::memcpy(&b->exch[(base + lane) * SLOT], in, bytes);
  b->exch_n[base + lane] = static_cast<unsigned char>(bytes);
  wait_at(b->warp_of(t_tid));
  const size_t src = base + static_cast<size_t>(src_lane);
  if (b->exch_n[src] != bytes) fault("warp shuffle: lanes exchange values of different sizes");
  std::memcpy(out, &b->exch[src * SLOT], bytes);
}

void fault(const char* what) {
  if (t_block == nullptr) {
    report(what);
    std::abort();
  }
  if (g_threads != nullptr) g_threads->fail(what);
  g_fibers->fail(what);
}

}  // namespace cuda_emu

// ---------------------------------------------------------------------------
// Runtime API.
using namespace cuda_emu;

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return cudaErrorInvalidValue;
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return cudaErrorInvalidValue;
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (free_bytes == nullptr || total_bytes == nullptr) return cudaErrorInvalidValue;
  const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  *total_bytes = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * page;
  *free_bytes = static_cast<size_t>(sysconf(_SC_AVPHYS_PAGES)) * page;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return cudaErrorInvalidValue;
  if (device != 0) return cudaErrorInvalidDevice;
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "geopref host emulator (%s)",
                use_threads() ? "OS threads" : "fibers");
  size_t free_b = 0;
  cudaMemGetInfo(&free_b, &prop->totalGlobalMem);
  prop->major = 0;  // no real architecture
  prop->minor = 0;
  prop->multiProcessorCount = 1;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return cudaErrorInvalidValue;
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = 1; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (ptr == nullptr) return cudaErrorInvalidValue;
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  auto* base = static_cast<unsigned char*>(
      ::operator new(bytes + 2 * GUARD, std::align_val_t{256}, std::nothrow));
  if (base == nullptr) return cudaErrorMemoryAllocation;
  std::memset(base, GUARD_BYTE, GUARD);
  std::memset(base + GUARD, 0xff, bytes);
  std::memset(base + GUARD + bytes, GUARD_BYTE, GUARD);
#if GEOPREF_EMU_ASAN
  ASAN_POISON_MEMORY_REGION(base, GUARD);
  ASAN_POISON_MEMORY_REGION(base + GUARD + bytes, GUARD);
#endif
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  g_allocs[reinterpret_cast<uintptr_t>(base + GUARD)] = {base, bytes};
  *ptr = base + GUARD;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  run_all();  // cudaFree synchronises the device
  if (ptr == nullptr) return cudaSuccess;
  const auto it = g_allocs.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == g_allocs.end()) {
    report("cudaFree of a pointer that cudaMalloc did not return (or freed twice)");
    return cudaErrorInvalidValue;
  }
  const allocation a = it->second;
  const bool intact = guards_intact(a);
  g_allocs.erase(it);
#if GEOPREF_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(a.base, a.bytes + 2 * GUARD);
#endif
  ::operator delete(a.base, std::align_val_t{256});
  if (!intact) {
    report("cudaFree: a write outside the device allocation was found");
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

namespace {

/// A copy as CUDA runs it for pageable host memory: host-to-device data is
/// staged at the call (the host buffer may change right after), the copy
/// itself is queued; device-to-host returns when the copy is done (with the
/// work it is ordered after); device-to-device is only queued. The device
/// side(s) must lie inside one live allocation.
cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream,
                 const char* what) {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  if (!valid_stream(stream)) return cudaErrorInvalidResourceHandle;
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return cudaErrorInvalidValue;
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return cudaErrorInvalidValue;
  bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind == cudaMemcpyDefault) {
    dst_dev = inside_allocation(dst, bytes);
    src_dev = inside_allocation(src, bytes);
  }
  if ((dst_dev && !inside_allocation(dst, bytes)) || (src_dev && !inside_allocation(src, bytes))) {
    report(std::string(what) + ": the device range is not inside one device allocation");
    return cudaErrorInvalidValue;
  }
  if (!dst_dev && !src_dev) {
    std::memmove(dst, src, bytes);
  } else if (!src_dev) {
    const auto* h = static_cast<const unsigned char*>(src);
    auto staged = std::make_shared<std::vector<unsigned char>>(h, h + bytes);
    enqueue(stream, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
  } else if (!dst_dev) {
    run_op(enqueue(stream, [dst, src, bytes] { std::memmove(dst, src, bytes); }));
    return take_error();
  } else {
    enqueue(stream, [dst, src, bytes] { std::memmove(dst, src, bytes); });
  }
  return cudaSuccess;
}

cudaError_t fill(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  if (!valid_stream(stream)) return cudaErrorInvalidResourceHandle;
  if (bytes == 0) return cudaSuccess;
  if (ptr == nullptr || !inside_allocation(ptr, bytes)) {
    report("cudaMemset: the range is not inside one device allocation");
    return cudaErrorInvalidValue;
  }
  enqueue(stream, [ptr, value, bytes] { std::memset(ptr, value, bytes); });
  return cudaSuccess;
}

}  // namespace

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return copy(dst, src, bytes, kind, stream, "cudaMemcpyAsync");
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return copy(dst, src, bytes, kind, nullptr, "cudaMemcpy");
}
// cudaMemset of device memory is asynchronous to the host too (legacy stream).
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  return fill(ptr, value, bytes, stream);
}
cudaError_t cudaMemset(void* ptr, int value, size_t bytes) { return fill(ptr, value, bytes, nullptr); }
// Rows of `width` bytes, `pitch` apart; as CUDA, width > pitch is an error and
// only the bytes of each row are touched (the whole span must be one allocation).
cudaError_t cudaMemset2DAsync(void* ptr, size_t pitch, int value, size_t width, size_t height,
                              cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  if (!valid_stream(stream)) return cudaErrorInvalidResourceHandle;
  if (width > pitch) return cudaErrorInvalidValue;
  if (width == 0 || height == 0) return cudaSuccess;
  const size_t span = pitch * (height - 1) + width;
  if (ptr == nullptr || !inside_allocation(ptr, span)) {
    report("cudaMemset2D: the rows are not inside one device allocation");
    return cudaErrorInvalidValue;
  }
  enqueue(stream, [ptr, pitch, value, width, height] {
    for (size_t r = 0; r < height; ++r) std::memset(static_cast<char*>(ptr) + r * pitch, value, width);
  });
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  if (stream == nullptr || flags > cudaStreamNonBlocking) return cudaErrorInvalidValue;
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  *stream = new CUstream_st{flags};
  g_streams.insert(*stream);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}
// Queued work of a destroyed stream still runs (when something waits for it).
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  if (stream == nullptr || g_streams.erase(stream) == 0) return cudaErrorInvalidResourceHandle;
  g_last.erase(stream);
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  if (!valid_stream(stream)) return cudaErrorInvalidResourceHandle;
  run_stream(stream);
  check_all_guards("at synchronisation");
  return take_error();
}
cudaError_t cudaDeviceSynchronize() {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  run_all();
  check_all_guards("at synchronisation");
  return take_error();
}

cudaError_t cudaGetLastError() {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  return take_error();
}
cudaError_t cudaPeekAtLastError() {
  std::lock_guard<std::recursive_mutex> lock(g_api_mutex);
  return g_error;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "unknown error";
}
const char* cudaGetErrorString(cudaError_t error) { return cudaGetErrorName(error); }
