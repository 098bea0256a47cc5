"""Derive the polynomial tables of :mod:`bpgpu.special` (needs mpmath; run by hand, not in CI).

erf(a) for a = |x| is split into pieces, each a polynomial of degree DEGREE in a variable s that
runs over [-1, 1] on the piece:

* piece 0, a in [0, 1]:  erf(a) = a * p0(s),  s = 2 a^2 - 1  (erf(a)/a is smooth in a^2);
* piece i, a in [lo, hi]:  erf(a) = 1 - exp(-a^2) * p_i(s),  s = (a - mid) / half, where
  p_i approximates the scaled complement erfcx(a) = exp(a^2) erfc(a), which is smooth and slowly
  varying, so the cancellation-free product exp(-a^2) erfcx(a) gives erf's tail.

Each p_i is the Chebyshev interpolant at DEGREE + 1 Chebyshev points, computed with 50 digits,
then rewritten in powers of s (Horner form) and rounded to float64. The script prints the tables
and the largest error of the rounded polynomials against mpmath on a dense grid, in units of
float64's spacing at erf(a) (ulp).

    python tools/derive_erf_coefficients.py
"""

import math

import mpmath as mp

mp.mp.dps = 50
DEGREE = 14
BREAKS = (1.0, 1.75, 3.0, 6.0)   # piece 0 is [0, 1]; then [1, 1.75], [1.75, 3], [3, 6]


def chebyshev_interpolant(f, n):
    """Coefficients c_j of sum_j c_j T_j(s) interpolating f at the n + 1 Chebyshev points."""
    m = n + 1
    nodes = [mp.pi * (k + mp.mpf(1) / 2) / m for k in range(m)]
    values = [f(mp.cos(t)) for t in nodes]
    coeffs = [2 * mp.fsum(v * mp.cos(j * t) for v, t in zip(values, nodes, strict=True)) / m for j in range(m)]
    coeffs[0] /= 2
    return coeffs


def chebyshev_to_powers(coeffs):
    """The same polynomial as sum_j coeffs[j] T_j(s), as coefficients of s^0, s^1, ..."""
    n = len(coeffs)
    power = [mp.mpf(0)] * n
    t_prev, t_cur = [mp.mpf(1)], [mp.mpf(0), mp.mpf(1)]   # T_0, T_1 in powers of s
    for j, c in enumerate(coeffs):
        t = t_prev if j == 0 else t_cur
        if j >= 2:
            t_next = [mp.mpf(0)] + [2 * v for v in t_cur]
            for k, v in enumerate(t_prev):
                t_next[k] -= v
            t_prev, t_cur = t_cur, t_next
            t = t_cur
        for k, v in enumerate(t):
            power[k] += c * v
    return power


def pieces():
    """``(lo, hi, f(s))`` for every piece, f being the function its polynomial approximates."""
    def small(s):
        a = mp.sqrt((s + 1) / 2)
        return mp.erf(a) / a if a else 2 / mp.sqrt(mp.pi)
    out = [(0.0, BREAKS[0], small)]
    for lo, hi in zip(BREAKS[:-1], BREAKS[1:], strict=True):
        def scaled(s, lo=lo, hi=hi):
            a = mp.mpf(lo + hi) / 2 + mp.mpf(hi - lo) / 2 * s
            return mp.exp(a * a) * mp.erfc(a)
        out.append((lo, hi, scaled))
    return out


def horner(coeffs, s):
    r = 0.0
    for c in reversed(coeffs):
        r = r * s + c
    return r


def main():
    tables = []
    for *_, f in pieces():
        tables.append([float(c) for c in chebyshev_to_powers(chebyshev_interpolant(f, DEGREE))])
    print(f"DEGREE = {DEGREE}\nBREAKS = {BREAKS}\nCOEFFICIENTS = (")
    for row in tables:
        items = [repr(c) for c in row]
        lines = [", ".join(items[k:k + 4]) for k in range(0, len(items), 4)]
        print("    (" + ",\n     ".join(lines) + "),")
    print(")")
    worst = 0.0
    for i, (lo, hi, _) in enumerate(pieces()):
        for k in range(2001):
            a = lo + (hi - lo) * k / 2000
            if i == 0:
                value = a * horner(tables[0], 2 * a * a / (hi * hi) - 1)
            else:
                s = (a - (lo + hi) / 2) / ((hi - lo) / 2)
                value = 1 - math.exp(-a * a) * horner(tables[i], s)
            exact = mp.erf(a)
            if exact:
                worst = max(worst, float(abs(value - exact)) / math.ulp(float(exact)))
    print(f"largest error on the grid: {worst:.2f} ulp")


if __name__ == "__main__":
    main()
