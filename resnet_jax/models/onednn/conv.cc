// 2-D convolution (NHWC activations, HWIO weights, fp32) through oneDNN, as XLA FFI handlers.
//
// Three handlers, one per pass, so XLA can drop the ones a step does not need (the input gradient
// of the first layer):
//   onednn_conv_fwd           (x, w)  -> y
//   onednn_conv_bwd_data      (dy, w) -> dx
//   onednn_conv_bwd_weights   (x, dy) -> dw
// Attributes (int64): stride_h, stride_w, pad_{lo,hi}_{h,w} (XLA's explicit padding pairs; the
// high side may be negative, oneDNN accepts what the output size implies), groups, threads
// (0: leave OpenMP's thread count alone; n: this call runs on n OpenMP threads).
//
// Why the weights are reordered: oneDNN is only fast when it picks the weight layout itself
// (format_tag::any, a blocked layout such as OIhw16i16o).  With the plain HWIO layout both
// backward passes fall to a much slower generic kernel.  So forward and backward-data reorder the
// HWIO weights into the chosen layout on every call, and backward-weights computes the gradient in
// its chosen layout and reorders it back to HWIO; a reorder costs little next to a convolution.
//
// Primitives are created once per (shape, attributes, thread count) and cached: oneDNN picks its
// kernel from the thread count at creation.  Scratch memory is per calling thread (XLA runs one
// call per device thread concurrently under pmap), so primitives are shared, buffers are not.
//
// A call on more than one thread takes the whole machine, so such calls never overlap: XLA runs
// independent thunks concurrently (a conv's two gradients, for one), and two OpenMP teams on the
// same cores stall each other at every barrier.  Calls on one thread each (the CPU split into one
// device per core) run side by side as before.

#include <omp.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

struct Geometry {
  int64_t n, h, w, c;        // input (NHWC)
  int64_t kh, kw, cout;      // kernel (HWIO: kh, kw, c / groups, cout)
  int64_t oh, ow;            // output spatial size
  int64_t stride_h, stride_w;
  int64_t pad_lo_h, pad_hi_h, pad_lo_w, pad_hi_w;
  int64_t groups;
  int threads;               // OpenMP threads at primitive creation

  std::array<int64_t, 17> key() const {
    return {n, h, w, c, kh, kw, cout, oh, ow, stride_h, stride_w,
            pad_lo_h, pad_hi_h, pad_lo_w, pad_hi_w, groups, threads};
  }
};

struct Primitives {
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
  memory::desc x_md, y_md, user_w_md;                // NHWC activations, HWIO weights
  memory::desc fwd_w_md, bwd_data_w_md, bwd_w_md;    // oneDNN's chosen weight layouts
  dnnl::reorder to_fwd_w, to_bwd_data_w, from_bwd_w; // empty when no reorder is needed
  bool reorder_fwd_w, reorder_bwd_data_w, reorder_bwd_w;
  size_t fwd_scratch, bwd_data_scratch, bwd_w_scratch;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// HWIO weights described in oneDNN's logical order: (O, I, H, W), or (G, O/G, I/G, H, W) when
// grouped; XLA's grouped HWIO puts group g's output channels at g*O/G .. (g+1)*O/G - 1.
memory::desc UserWeights(const Geometry& g) {
  const int64_t cin_g = g.c / g.groups, cout_g = g.cout / g.groups;
  const int64_t s_o = 1, s_i = g.cout, s_w = cin_g * g.cout, s_h = g.kw * cin_g * g.cout;
  if (g.groups == 1) {
    return memory::desc({g.cout, cin_g, g.kh, g.kw}, dt::f32, {s_o, s_i, s_h, s_w});
  }
  return memory::desc({g.groups, cout_g, cin_g, g.kh, g.kw}, dt::f32,
                      {cout_g, s_o, s_i, s_h, s_w});
}

memory::desc AnyWeights(const Geometry& g) {
  const int64_t cin_g = g.c / g.groups, cout_g = g.cout / g.groups;
  if (g.groups == 1) return memory::desc({g.cout, cin_g, g.kh, g.kw}, dt::f32, tag::any);
  return memory::desc({g.groups, cout_g, cin_g, g.kh, g.kw}, dt::f32, tag::any);
}

std::unique_ptr<Primitives> Create(const Geometry& g) {
  auto p = std::make_unique<Primitives>();
  dnnl::engine& eng = Engine();
  p->x_md = memory::desc({g.n, g.c, g.h, g.w}, dt::f32, tag::nhwc);
  p->y_md = memory::desc({g.n, g.cout, g.oh, g.ow}, dt::f32, tag::nhwc);
  p->user_w_md = UserWeights(g);
  const memory::desc w_any = AnyWeights(g);
  const memory::dims strides = {g.stride_h, g.stride_w};
  const memory::dims pad_l = {g.pad_lo_h, g.pad_lo_w}, pad_r = {g.pad_hi_h, g.pad_hi_w};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, p->x_md, w_any,
      p->y_md, strides, pad_l, pad_r, attr);
  auto bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      eng, dnnl::algorithm::convolution_direct, p->x_md, w_any, p->y_md, strides, pad_l, pad_r,
      fwd_pd, attr);
  auto bwd_w_pd = dnnl::convolution_backward_weights::primitive_desc(
      eng, dnnl::algorithm::convolution_direct, p->x_md, w_any, p->y_md, strides, pad_l, pad_r,
      fwd_pd, attr);

  p->fwd = dnnl::convolution_forward(fwd_pd);
  p->bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
  p->bwd_weights = dnnl::convolution_backward_weights(bwd_w_pd);
  p->fwd_w_md = fwd_pd.weights_desc();
  p->bwd_data_w_md = bwd_data_pd.weights_desc();
  p->bwd_w_md = bwd_w_pd.diff_weights_desc();
  p->reorder_fwd_w = p->fwd_w_md != p->user_w_md;
  p->reorder_bwd_data_w = p->bwd_data_w_md != p->user_w_md;
  p->reorder_bwd_w = p->bwd_w_md != p->user_w_md;
  if (p->reorder_fwd_w) {
    p->to_fwd_w = dnnl::reorder(dnnl::reorder::primitive_desc(eng, p->user_w_md, eng, p->fwd_w_md));
  }
  if (p->reorder_bwd_data_w) {
    p->to_bwd_data_w =
        dnnl::reorder(dnnl::reorder::primitive_desc(eng, p->user_w_md, eng, p->bwd_data_w_md));
  }
  if (p->reorder_bwd_w) {
    p->from_bwd_w = dnnl::reorder(dnnl::reorder::primitive_desc(eng, p->bwd_w_md, eng, p->user_w_md));
  }
  p->fwd_scratch = fwd_pd.scratchpad_desc().get_size();
  p->bwd_data_scratch = bwd_data_pd.scratchpad_desc().get_size();
  p->bwd_w_scratch = bwd_w_pd.scratchpad_desc().get_size();
  return p;
}

const Primitives& Lookup(const Geometry& g) {
  static std::mutex mu;
  static std::map<std::array<int64_t, 17>, std::unique_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[g.key()];
  if (!slot) slot = Create(g);
  return *slot;
}

// Per-thread growable buffers: scratchpad and the reordered weights.
struct ThreadBuffers {
  std::vector<char> scratch, weights;
  static char* Grow(std::vector<char>& v, size_t bytes) {
    if (v.size() < bytes) v.resize(bytes);
    return v.data();
  }
};
thread_local ThreadBuffers buffers;

struct Attrs {
  int64_t stride_h, stride_w, pad_lo_h, pad_hi_h, pad_lo_w, pad_hi_w, groups, threads;
};

std::mutex& WholeMachine() {
  static std::mutex mu;
  return mu;
}

// Holds WholeMachine() for a multi-threaded call; nothing for a single-threaded one.
class CoreOwnership {
 public:
  explicit CoreOwnership(int threads) {
    if (threads > 1) lock_ = std::unique_lock<std::mutex>(WholeMachine());
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, const Attrs& a) {
  if (a.threads > 0) omp_set_num_threads(static_cast<int>(a.threads));
  return Geometry{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
                  a.stride_h, a.stride_w, a.pad_lo_h, a.pad_hi_h, a.pad_lo_w, a.pad_hi_w,
                  a.groups, omp_get_max_threads()};
}

template <typename F>
ffi::Error Guarded(F&& body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
}

using F32 = ffi::Buffer<ffi::F32, 4>;
using F32Out = ffi::ResultBuffer<ffi::F32, 4>;

ffi::Error ConvFwd(F32 x, F32 w, F32Out y, int64_t stride_h, int64_t stride_w, int64_t pad_lo_h,
                   int64_t pad_hi_h, int64_t pad_lo_w, int64_t pad_hi_w, int64_t groups,
                   int64_t threads) {
  return Guarded([&] {
    const Attrs a{stride_h, stride_w, pad_lo_h, pad_hi_h, pad_lo_w, pad_hi_w, groups, threads};
    const Primitives& p = Lookup(MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), a));
    const CoreOwnership cores(omp_get_max_threads());
    dnnl::engine& eng = Engine();
    dnnl::stream stream(eng);
    memory user_w(p.user_w_md, eng, w.typed_data());
    memory fwd_w = user_w;
    if (p.reorder_fwd_w) {
      fwd_w = memory(p.fwd_w_md, eng, ThreadBuffers::Grow(buffers.weights, p.fwd_w_md.get_size()));
      p.to_fwd_w.execute(stream, user_w, fwd_w);
    }
    memory scratch(memory::desc({static_cast<int64_t>(p.fwd_scratch)}, dt::u8, tag::x), eng,
                   ThreadBuffers::Grow(buffers.scratch, p.fwd_scratch));
    p.fwd.execute(stream, {{DNNL_ARG_SRC, memory(p.x_md, eng, x.typed_data())},
                           {DNNL_ARG_WEIGHTS, fwd_w},
                           {DNNL_ARG_DST, memory(p.y_md, eng, y->typed_data())},
                           {DNNL_ARG_SCRATCHPAD, scratch}});
    stream.wait();
  });
}

ffi::Error ConvBwdData(F32 dy, F32 w, F32Out dx, int64_t stride_h, int64_t stride_w,
                       int64_t pad_lo_h, int64_t pad_hi_h, int64_t pad_lo_w, int64_t pad_hi_w,
                       int64_t groups, int64_t threads) {
  return Guarded([&] {
    const Attrs a{stride_h, stride_w, pad_lo_h, pad_hi_h, pad_lo_w, pad_hi_w, groups, threads};
    const Primitives& p =
        Lookup(MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), a));
    const CoreOwnership cores(omp_get_max_threads());
    dnnl::engine& eng = Engine();
    dnnl::stream stream(eng);
    memory user_w(p.user_w_md, eng, w.typed_data());
    memory bwd_w = user_w;
    if (p.reorder_bwd_data_w) {
      bwd_w = memory(p.bwd_data_w_md, eng,
                     ThreadBuffers::Grow(buffers.weights, p.bwd_data_w_md.get_size()));
      p.to_bwd_data_w.execute(stream, user_w, bwd_w);
    }
    memory scratch(memory::desc({static_cast<int64_t>(p.bwd_data_scratch)}, dt::u8, tag::x), eng,
                   ThreadBuffers::Grow(buffers.scratch, p.bwd_data_scratch));
    p.bwd_data.execute(stream, {{DNNL_ARG_DIFF_DST, memory(p.y_md, eng, dy.typed_data())},
                                {DNNL_ARG_WEIGHTS, bwd_w},
                                {DNNL_ARG_DIFF_SRC, memory(p.x_md, eng, dx->typed_data())},
                                {DNNL_ARG_SCRATCHPAD, scratch}});
    stream.wait();
  });
}

ffi::Error ConvBwdWeights(F32 x, F32 dy, F32Out dw, int64_t stride_h, int64_t stride_w,
                          int64_t pad_lo_h, int64_t pad_hi_h, int64_t pad_lo_w, int64_t pad_hi_w,
                          int64_t groups, int64_t threads) {
  return Guarded([&] {
    const Attrs a{stride_h, stride_w, pad_lo_h, pad_hi_h, pad_lo_w, pad_hi_w, groups, threads};
    const Primitives& p =
        Lookup(MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), a));
    const CoreOwnership cores(omp_get_max_threads());
    dnnl::engine& eng = Engine();
    dnnl::stream stream(eng);
    memory user_dw(p.user_w_md, eng, dw->typed_data());
    memory bwd_dw = user_dw;
    if (p.reorder_bwd_w) {
      bwd_dw = memory(p.bwd_w_md, eng, ThreadBuffers::Grow(buffers.weights, p.bwd_w_md.get_size()));
    }
    memory scratch(memory::desc({static_cast<int64_t>(p.bwd_w_scratch)}, dt::u8, tag::x), eng,
                   ThreadBuffers::Grow(buffers.scratch, p.bwd_w_scratch));
    p.bwd_weights.execute(stream, {{DNNL_ARG_SRC, memory(p.x_md, eng, x.typed_data())},
                                   {DNNL_ARG_DIFF_DST, memory(p.y_md, eng, dy.typed_data())},
                                   {DNNL_ARG_DIFF_WEIGHTS, bwd_dw},
                                   {DNNL_ARG_SCRATCHPAD, scratch}});
    if (p.reorder_bwd_w) p.from_bwd_w.execute(stream, bwd_dw, user_dw);
    stream.wait();
  });
}

template <typename B>
auto WithAttrs(B binding) {
  return std::move(binding)
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_lo_h")
      .template Attr<int64_t>("pad_hi_h")
      .template Attr<int64_t>("pad_lo_w")
      .template Attr<int64_t>("pad_hi_w")
      .template Attr<int64_t>("groups")
      .template Attr<int64_t>("threads");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, ConvFwd,
                              WithAttrs(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, ConvBwdData,
                              WithAttrs(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, ConvBwdWeights,
                              WithAttrs(ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()));

// The oneDNN version the kernel runs against, for the log line and the tests.
extern "C" int OnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
