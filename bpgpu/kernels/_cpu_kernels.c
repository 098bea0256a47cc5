/* bpgpu's C kernels for the CPU: the optimizer update rules of _cpu_update.h for float32 (suffix
 * _f32) and float64 (suffix _f64). Compiled on first use by bpgpu/kernels/_c_kernels.py, which
 * says how and why. No Python API: a plain shared library, called through ctypes. */
#include <math.h>
#include <stddef.h>

#define CHUNK 2048          /* elements per chunk: 8 or 16 KiB, inside the L1 cache */
#define CLIP_NONE 0
#define CLIP_VALUE 1
#define CLIP_SCALE 2
#define DECAY_NONE 0
#define DECAY_L2 1
#define DECAY_DECOUPLED 2

#define REAL float
#define SQRT sqrtf
#define NAME(x) x##_f32
#include "_cpu_update.h"
#undef REAL
#undef SQRT
#undef NAME

#define REAL double
#define SQRT sqrt
#define NAME(x) x##_f64
#include "_cpu_update.h"
#undef REAL
#undef SQRT
#undef NAME
