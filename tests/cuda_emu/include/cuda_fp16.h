// CPU stand-in for CUDA's <cuda_fp16.h> (tests/cuda_emu, never shipped): the 16-bit float
// storage type __half and the two conversions bpgpu's kernels use, plus CuPy's ``float16``
// class (cupy/float16.cuh), which CuPy's generated code declares float16 arguments with.
// Nothing else: __half arithmetic (__hadd, __hmul, half operators...) is NOT defined, so a
// kernel relying on it fails to compile here instead of being modelled by guesswork.
#pragma once
#include <cstring>

// IEEE binary16 bits. GCC 12 on x86-64 has _Float16, whose conversions from float round to
// nearest, ties to even (as CUDA's __float2half does) and handle subnormals, inf and NaN.
struct __half {
    unsigned short bits;
};

inline __half __float2half(float v) {
    _Float16 h = (_Float16)v;
    __half out;
    std::memcpy(&out.bits, &h, 2);
    return out;
}

inline float __half2float(__half h) {
    _Float16 v;
    std::memcpy(&v, &h.bits, 2);
    return (float)v;
}

// CuPy's float16 (cupy/float16.cuh with CUDA >= 9): built implicitly only from float (other
// types need an explicit conversion there; refused here), read implicitly as float, so
// arithmetic on float16 values happens in float. Assignment from anything but float16 or float
// is refused (CuPy converts other types through their own rounding paths).
class float16 {
    __half data_;
public:
    float16() = default;
    float16(float v) : data_(__float2half(v)) {}
    template <class T> float16(T) = delete;
    operator float() const { return __half2float(data_); }
    float16& operator=(const float16&) = default;
    float16& operator=(float v) { data_ = __float2half(v); return *this; }
    template <class T> float16& operator=(const T&) = delete;
};
static_assert(sizeof(float16) == 2, "float16 must be two bytes, as in device memory");
