"""Exact summaries (count, mean, std, min, max, quantiles) of values spread over ranks.

A sharded per-sample table (:mod:`debiascl.state.sharded`) holds N / world_size rows per rank;
its per-epoch diagnostics must not gather the whole table (O(N) memory on every rank at 10**8 to
10**9 ids). :func:`summarize` computes them from each rank's local float32 values with O(local)
memory and a fixed number of small collectives, and returns the *same bits* whatever the
partition of the values over ranks (one process with all of them included), because every
quantity is reduced as integers:

* sums: a float32 is ``m * 2**(b - 150)`` with an integer ``|m| < 2**24`` and a binade ``b`` in
  [1, 254]; the sums of ``m`` per binade (and of ``m**2``, split into three products below
  2**24 each) are int64, exact for fewer than 2**39 values, and one all-reduce adds them. The
  mean and the unbiased variance are then formed in exact rational arithmetic and rounded once
  (correctly rounded mean; std = sqrt of the correctly rounded variance);
* order statistics: radix selection on the order-preserving 32-bit integer key of each float32,
  8 bits per round. Each round every rank histograms the next byte of its values that match the
  prefix found so far (one histogram per distinct prefix), one all-reduce sums the histograms,
  and the byte holding the wanted rank is fixed. Four rounds give the exact k-th smallest value;
  the keys matching distinct prefixes are disjoint, so each round reads each local value once.
  Quantiles interpolate linearly between the two order statistics around ``q * (n - 1)`` (the
  default of ``torch.quantile`` / ``numpy.quantile``), in float64; min and max are the 0-th and
  (n - 1)-th order statistics.

Collectives per call: one all-reduce of 1025 int64 (sums) and, when there are values, four
all-reduces of at most (2 q + 2) x 256 int64 (selection). Every rank must call it at the same
point, each with its own values; with ``collective=False`` (a replicated table) nothing is
communicated and the result is that of the values given.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.distributed as dist

from debiascl import distributed as dist_utils
from debiascl.errors import ConfigError

_BINADES = 256
_ROUNDS = (24, 16, 8, 0)  # bit offsets of the key's bytes, most significant first


def _comm_device() -> torch.device:
    """Where collectives run: CUDA for NCCL, else CPU (gloo also reduces CPU tensors)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(x: torch.Tensor, collective: bool) -> torch.Tensor:
    """Sum ``x`` over ranks when ``collective`` (on the backend's device), returned on the CPU."""
    if not collective or not dist_utils.is_distributed():
        return x.cpu()
    y = x.to(_comm_device())
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.cpu()


def ordered_keys(values: torch.Tensor) -> torch.Tensor:
    """(n,) int64 keys in [0, 2**32) that sort like the float32 ``values`` (finite, or inf)."""
    bits = values.contiguous().view(torch.int32).long()
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF) + (1 << 31)


def key_value(key: int) -> float:
    """The float32 value (as a Python float) of an :func:`ordered_keys` key."""
    k = key - (1 << 31)
    bits = k if k >= 0 else k ^ 0x7FFFFFFF
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def _binade_sums(values: torch.Tensor) -> torch.Tensor:
    """(4, 256) int64 per-binade sums of m, h*h, h*l and l*l, where a value is m * 2**(b - 150)
    and |m| = h * 2**12 + l (so m**2 = h*h * 2**24 + h*l * 2**13 + l*l)."""
    bits = values.contiguous().view(torch.int32).long()
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    mag = torch.where(exponent > 0, mantissa | 0x800000, mantissa)  # implicit leading bit
    binade = exponent.clamp_min(1)  # subnormals share binade 1's scale
    hi, lo = mag >> 12, mag & 0xFFF
    signed = torch.where(bits < 0, -mag, mag)
    out = torch.zeros(4, _BINADES, dtype=torch.int64, device=values.device)
    for row, term in enumerate((signed, hi * hi, hi * lo, lo * lo)):
        out[row].index_add_(0, binade, term)
    return out


def _exact_moments(sums: torch.Tensor) -> tuple[Fraction, Fraction]:
    """(sum of values, sum of squares) as exact rationals from :func:`_binade_sums` totals."""
    s, hh, hl, ll = (row.tolist() for row in sums)
    total = sum(int(v) << b for b, v in enumerate(s))
    squares = sum(
        ((int(hh[b]) << 24) + (int(hl[b]) << 13) + int(ll[b])) << (2 * b) for b in range(256)
    )
    return Fraction(total, 1 << 150), Fraction(squares, 1 << 300)


def select_ranks(keys: torch.Tensor, ranks: Sequence[int], collective: bool) -> list[int]:
    """Keys of the ``ranks``-th smallest values (0-based) of the union of every rank's ``keys``.

    Args:
        keys: (n_local,) int64 :func:`ordered_keys` of this rank's values.
        ranks: order statistics wanted, each in [0, n) for the global count n (the same list on
            every rank).
        collective: sum the histograms over ranks (every rank calls with its own keys).

    Returns:
        The keys, in the order of ``ranks`` (identical on every rank).
    """
    prefix = [0] * len(ranks)  # key bits fixed so far, per wanted rank
    below = list(ranks)  # rank still sought among the keys matching the prefix
    pools = {0: keys}  # this rank's keys matching each distinct prefix (disjoint sets)
    for shift in _ROUNDS:
        distinct = sorted(pools)
        digits = {p: (pools[p] >> shift) & 0xFF for p in distinct}
        hist = torch.stack([torch.bincount(digits[p], minlength=256) for p in distinct])
        cum = _all_reduce(hist, collective).cumsum(1)
        for i, p in enumerate(prefix):
            counts = cum[distinct.index(p)]
            digit = int(torch.searchsorted(counts, torch.tensor(below[i]), right=True))
            below[i] -= int(counts[digit - 1]) if digit > 0 else 0
            prefix[i] = (p << 8) | digit
        if shift > 0:  # narrow each pool to the keys of the next round's prefixes
            pools = {q: pools[q >> 8][digits[q >> 8] == (q & 0xFF)] for q in set(prefix)}
    return prefix


def summarize(
    values: torch.Tensor, collective: bool, quantiles: Sequence[float] = (0.1, 0.5, 0.9)
) -> dict[str, float]:
    """Count, mean, std, min, max and quantiles of the union of every rank's finite ``values``.

    Args:
        values: (n_local,) float32 values held by this rank (non-finite ones are ignored).
        collective: reduce over the process group (every rank calls with its own values); False
            for values every rank holds in full (a replicated table).
        quantiles: q in [0, 1]; ``p{round(100 q)}`` is the linearly interpolated quantile.

    Returns:
        ``{"count": n}`` and, when n > 0, ``mean``, ``std`` (unbiased; 0 for one value), ``min``,
        ``max`` and ``p10``-style quantiles, bit-identical for any partition of the values.

    Raises:
        ConfigError: a quantile outside [0, 1].
    """
    if not all(0.0 <= q <= 1.0 for q in quantiles):
        raise ConfigError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
    values = values.detach().float().reshape(-1)
    values = values[torch.isfinite(values)]
    local = torch.cat(
        [torch.tensor([values.numel()], device=values.device), _binade_sums(values).reshape(-1)]
    )
    reduced = _all_reduce(local, collective)
    n = int(reduced[0])
    out: dict[str, float] = {"count": float(n)}
    if n == 0:
        return out
    total, squares = _exact_moments(reduced[1:].reshape(4, _BINADES))
    var = (squares - total * total / n) / (n - 1) if n > 1 else Fraction(0)
    positions = [q * (n - 1) for q in quantiles]
    lows = [math.floor(h) for h in positions]
    needed = sorted({0, n - 1, *lows, *(min(lo + 1, n - 1) for lo in lows)})
    picked = dict(zip(needed, select_ranks(ordered_keys(values), needed, collective), strict=True))
    value = {k: key_value(key) for k, key in picked.items()}
    out.update(mean=float(total / n), std=math.sqrt(float(var)), min=value[0], max=value[n - 1])
    for q, h, lo in zip(quantiles, positions, lows, strict=True):
        a, b = value[lo], value[min(lo + 1, n - 1)]
        weight = torch.tensor(h - lo, dtype=torch.float64)
        lerp = torch.lerp(
            torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), weight
        )
        out[f"p{round(100 * q)}"] = float(lerp)
    return out
