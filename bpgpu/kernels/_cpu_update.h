/* The flat optimizer update rules of bpgpu's NumPy fast path, in C, for one floating type.
 *
 * Included twice by _cpu_kernels.c, once per type, with REAL (the type), SQRT (its square root)
 * and NAME(x) (x with the type's suffix) defined. Every rule repeats, element by element, the
 * NumPy passes of the rule of the same name in bpgpu/kernels/_numpy_update.py: the same operations
 * on the same operands in the same order, each rounded to REAL (scalars are rounded to REAL
 * before use, as NumPy casts a Python float to the array's type). Compiled without contraction
 * (-ffp-contract=off) and without -ffast-math, so the results are bit-identical to NumPy's.
 *
 * The buffers are walked in chunks of CHUNK elements: the gradient of a chunk is formed first
 * (the row shards' partial gradients added into g, then the clip, into a scratch chunk on the
 * stack), then the rule runs over the chunk while it is in the L1 cache. Each loop body has no
 * branch on the data, so the compiler vectorises it.
 */

/* g[i] (+ each partial gradient, kept in g) for i in [0, len), then clipped (into scratch) when
 * clip_mode asks. Returns the gradient the rule reads. */
static const REAL *NAME(gradient)(REAL *restrict g, const REAL *const *partials, int n_partials,
                                  ptrdiff_t offset, ptrdiff_t len, int clip_mode, REAL clip,
                                  REAL *restrict scratch)
{
    for (int k = 0; k < n_partials; k++) {
        const REAL *restrict partial = partials[k] + offset;
        for (ptrdiff_t i = 0; i < len; i++)
            g[i] = g[i] + partial[i];
    }
    if (clip_mode == CLIP_VALUE) {  /* min(max(g, -c), c); NaN stays NaN, as in NumPy */
        for (ptrdiff_t i = 0; i < len; i++) {
            REAL x = g[i] < -clip ? -clip : g[i];
            scratch[i] = x > clip ? clip : x;
        }
        return scratch;
    }
    if (clip_mode == CLIP_SCALE) {  /* g scale, the scale taken from the whole gradient */
        for (ptrdiff_t i = 0; i < len; i++)
            scratch[i] = g[i] * clip;
        return scratch;
    }
    return g;
}

/* Adam / AdamW (reference: bpgpu.optimizers.Adam._update; NumPy twin: _numpy_update._adam).
 * decay: DECAY_L2 reads g + p weight_decay, DECAY_DECOUPLED first scales p by `decay_factor`
 * (1 - lr weight_decay); eps_c = eps sqrt(1 - beta2^t), step = lr / (1 - beta1^t) sqrt(1 - beta2^t).
 *   m = m beta1 + g (1 - beta1);  v = v beta2 + g^2 (1 - beta2);  p = p - m / (sqrt(v) + eps_c) step */
void NAME(bp_adam)(ptrdiff_t n, REAL *p, REAL *g, const REAL *const *partials, int n_partials,
                   int clip_mode, double clip, int decay, double decay_factor, REAL *m, REAL *v,
                   double beta1, double one_minus_beta1, double beta2, double one_minus_beta2,
                   double eps_c, double step)
{
    const REAL c = (REAL)clip, wd = (REAL)decay_factor, b1 = (REAL)beta1,
               omb1 = (REAL)one_minus_beta1, b2 = (REAL)beta2, omb2 = (REAL)one_minus_beta2,
               e = (REAL)eps_c, s = (REAL)step;
    REAL scratch[CHUNK];
    for (ptrdiff_t lo = 0; lo < n; lo += CHUNK) {
        ptrdiff_t len = n - lo < CHUNK ? n - lo : CHUNK;
        const REAL *restrict gc = NAME(gradient)(g + lo, partials, n_partials, lo, len,
                                                 clip_mode, c, scratch);
        REAL *restrict pc = p + lo, *restrict mc = m + lo, *restrict vc = v + lo;
        if (decay == DECAY_DECOUPLED)
            for (ptrdiff_t i = 0; i < len; i++)
                pc[i] = pc[i] * wd;
        for (ptrdiff_t i = 0; i < len; i++) {
            REAL gi = decay == DECAY_L2 ? gc[i] + pc[i] * wd : gc[i];
            REAL mi = mc[i] * b1 + gi * omb1;
            REAL vi = vc[i] * b2 + (gi * gi) * omb2;
            mc[i] = mi;
            vc[i] = vi;
            pc[i] = pc[i] - (mi / (SQRT(vi) + e)) * s;
        }
    }
}

/* SGD (reference: bpgpu.optimizers.SGD._update; NumPy twin: _numpy_update._sgd). With
 * velocity (momentum > 0): u = g on the first step, else u = u momentum + g (1 - dampening);
 * the step then follows g + u momentum (nesterov) or u. p = p - step lr. decay: DECAY_L2 reads
 * g + p weight_decay. */
void NAME(bp_sgd)(ptrdiff_t n, REAL *p, REAL *g, const REAL *const *partials, int n_partials,
                  int clip_mode, double clip, int decay, double weight_decay, REAL *velocity,
                  double momentum, double one_minus_dampening, int first, int nesterov, double lr)
{
    const REAL c = (REAL)clip, wd = (REAL)weight_decay, mu = (REAL)momentum,
               omd = (REAL)one_minus_dampening, rate = (REAL)lr;
    REAL scratch[CHUNK];
    for (ptrdiff_t lo = 0; lo < n; lo += CHUNK) {
        ptrdiff_t len = n - lo < CHUNK ? n - lo : CHUNK;
        const REAL *restrict gc = NAME(gradient)(g + lo, partials, n_partials, lo, len,
                                                 clip_mode, c, scratch);
        REAL *restrict pc = p + lo;
        if (velocity == NULL) {
            for (ptrdiff_t i = 0; i < len; i++) {
                REAL gi = decay == DECAY_L2 ? gc[i] + pc[i] * wd : gc[i];
                pc[i] = pc[i] - gi * rate;
            }
            continue;
        }
        REAL *restrict uc = velocity + lo;
        for (ptrdiff_t i = 0; i < len; i++) {
            REAL gi = decay == DECAY_L2 ? gc[i] + pc[i] * wd : gc[i];
            REAL ui = first ? gi : uc[i] * mu + gi * omd;
            uc[i] = ui;
            REAL di = nesterov ? gi + ui * mu : ui;
            pc[i] = pc[i] - di * rate;
        }
    }
}

/* RMSprop (reference: bpgpu.optimizers.RMSprop._update; NumPy twin: _numpy_update._rmsprop).
 *   sq = sq alpha + g^2 (1 - alpha); with grad_avg (centered): ga = ga alpha + g (1 - alpha),
 *   d = g / (sqrt(sq - ga^2) + eps), else d = g / (sqrt(sq) + eps); with velocity:
 *   u = u momentum + d, p = p - u lr; else p = p - d lr. decay: DECAY_L2 reads g + p weight_decay. */
void NAME(bp_rmsprop)(ptrdiff_t n, REAL *p, REAL *g, const REAL *const *partials, int n_partials,
                      int clip_mode, double clip, int decay, double weight_decay, REAL *square_avg,
                      REAL *grad_avg, REAL *velocity, double alpha, double one_minus_alpha,
                      double eps, double momentum, double lr)
{
    const REAL c = (REAL)clip, wd = (REAL)weight_decay, a = (REAL)alpha,
               oma = (REAL)one_minus_alpha, e = (REAL)eps, mu = (REAL)momentum, rate = (REAL)lr;
    REAL scratch[CHUNK];
    for (ptrdiff_t lo = 0; lo < n; lo += CHUNK) {
        ptrdiff_t len = n - lo < CHUNK ? n - lo : CHUNK;
        const REAL *restrict gc = NAME(gradient)(g + lo, partials, n_partials, lo, len,
                                                 clip_mode, c, scratch);
        REAL *restrict pc = p + lo, *restrict sc = square_avg + lo;
        REAL *restrict ac = grad_avg == NULL ? NULL : grad_avg + lo;
        REAL *restrict uc = velocity == NULL ? NULL : velocity + lo;
        for (ptrdiff_t i = 0; i < len; i++) {
            REAL gi = decay == DECAY_L2 ? gc[i] + pc[i] * wd : gc[i];
            REAL si = sc[i] * a + (gi * gi) * oma;
            sc[i] = si;
            REAL root;
            if (ac != NULL) {
                REAL ai = ac[i] * a + gi * oma;
                ac[i] = ai;
                root = SQRT(si - ai * ai);
            } else {
                root = SQRT(si);
            }
            REAL di = gi / (root + e);
            if (uc != NULL) {
                REAL ui = uc[i] * mu + di;
                uc[i] = ui;
                di = ui;
            }
            pc[i] = pc[i] - di * rate;
        }
    }
}
