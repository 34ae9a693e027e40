"""Permutohedral-lattice Gaussian filtering in plain PyTorch (Adams, Baek and Davis, Eurographics 2010).

The CRF-energy regulariser of the published SeCo code filters with the rloss lattice (Tang et al., ECCV 2018,
after Krähenbühl's dense-CRF code), a compiled extension. :class:`PermutohedralLattice` computes the same
filter with tensor operations only, so it runs on CPU and CUDA with nothing to compile, in time and memory
linear in the number of pixels:

1. *elevate* each d-dimensional feature onto the hyperplane ``H_d`` of R^(d+1) and find the simplex of the
   permutohedral lattice that encloses it (its d + 1 vertices and barycentric weights);
2. *splat* the values onto those vertices; the distinct vertices of the whole batch are found with one
   ``torch.unique`` over integer codes of their coordinates (the lattice "hash table");
3. *blur* along each of the d + 1 lattice axes with the kernel ``[1/2, 1, 1/2]``;
4. *slice*: read the blurred vertices back with the same barycentric weights, times ``1 / (1 + 2^-d)``.

As in rloss the output is not normalised by the filtered ones, so it approximates the dense Gaussian
``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` with a known low bias (docs/algorithm.md, "CRF energy"); the
published loss strength includes that bias, which is why this is the default filter of ``loss.reg``.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["PermutohedralLattice", "permutohedral_filter"]

#: bits available for a vertex code (int64, sign bit kept clear)
_CODE_BITS = 62


class PermutohedralLattice:
    """The lattice of a batch of feature sets, reusable to filter any number of value channels.

    Args:
        features: (B, d, N) float features, already divided by their bandwidths (sigmas); every item of the
            batch gets its own lattice (vertices are never shared across items).

    Attributes:
        num_vertices: M, the number of distinct lattice vertices touched by the batch.
    """

    def __init__(self, features: torch.Tensor) -> None:
        if features.dim() != 3:
            raise ValueError(f"features must be (B, d, N), got shape {tuple(features.shape)}")
        b, d, n = features.shape
        if d < 1 or n < 1:
            raise ValueError(f"features must have d >= 1 and N >= 1, got shape {tuple(features.shape)}")
        self.batch, self.dim, self.points = b, d, n
        f = features.detach().to(torch.float32).permute(0, 2, 1).reshape(b * n, d)  # (P, d), P = B * N
        rem0, rank, elevated = _enclosing_simplex(f)
        self.weights = _barycentric(elevated, rem0, rank)  # (P, d + 1)
        keys = _simplex_vertices(rem0, rank)  # (P, d + 1, d) integer lattice coordinates
        item = torch.arange(b, device=f.device).repeat_interleave(n)  # (P,) batch item of each point
        coder = _VertexCoder(keys, items=b, margin=d + 1)
        codes = coder.encode(keys, item[:, None].expand(-1, d + 1))  # (P, d + 1)
        self.vertex_codes, inverse = torch.unique(codes.flatten(), sorted=True, return_inverse=True)  # (M,)
        self.num_vertices = int(self.vertex_codes.numel())
        # Slot 0 of every value table is a zero vertex that stands for "no such neighbour" (rloss's -1 + 1).
        self.offsets = inverse.view(b * n, d + 1) + 1  # (P, d + 1) vertex slot of each simplex corner
        vertex_keys = keys.new_empty(self.num_vertices, d)
        vertex_keys[inverse] = keys.reshape(-1, d)  # any occurrence of a vertex has its coordinates
        vertex_item = item.new_empty(self.num_vertices)
        vertex_item[inverse] = item[:, None].expand(-1, d + 1).flatten()
        # Every vertex's 2 (d + 1) neighbours looked up at once: a few operations for all axes, not a few per axis
        slots = self._lookup(coder, vertex_keys + _steps(d, keys.device)[:, None, :], vertex_item)  # (2(d+1), M+1)
        self.neighbours = [(slots[2 * axis], slots[2 * axis + 1]) for axis in range(d + 1)]
        # per axis: (M + 1,) slots of the two neighbours along it (-, +), slot 0 for a vertex that is not there

    def _lookup(self, coder: _VertexCoder, keys: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """The value-table slots (S, M + 1) of vertices ``keys`` (S, M, d) of batch items ``item`` (M,), slot 0 where
        a vertex is not in the lattice; column 0 is the zero vertex's own (itself)."""
        codes = coder.encode(keys, item)  # (S, M)
        pos = torch.searchsorted(self.vertex_codes, codes.flatten()).clamp(max=self.num_vertices - 1).view_as(codes)
        slots = torch.where(self.vertex_codes[pos] == codes, pos + 1, torch.zeros_like(pos))
        return torch.cat([slots.new_zeros(slots.shape[0], 1), slots], dim=1)

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Splat, blur and slice ``values`` (B, K, N) -> (B, K, N) in float32 (differentiable in ``values``)."""
        b, d, n = self.batch, self.dim, self.points
        if values.dim() != 3 or values.shape[0] != b or values.shape[2] != n:
            raise ValueError(f"values must be (B, K, N) = ({b}, K, {n}), got shape {tuple(values.shape)}")
        k = values.shape[1]
        v = values.to(torch.float32).permute(0, 2, 1).reshape(b * n, k)  # (P, K)
        table = v.new_zeros(self.num_vertices + 1, k)  # (M + 1, K), slot 0 the zero vertex
        for corner in range(d + 1):  # splat: one corner at a time keeps memory at O(P K)
            table = table.index_add(0, self.offsets[:, corner], v * self.weights[:, corner, None])
        for lower, upper in self.neighbours:  # blur: [1/2, 1, 1/2] along each lattice axis
            table = table + 0.5 * (table[lower] + table[upper])
        alpha = 1.0 / (1.0 + 2.0 ** (-d))  # rloss / Krähenbühl's slicing constant
        out = sum(table[self.offsets[:, c]] * (alpha * self.weights[:, c, None]) for c in range(d + 1))  # (P, K)
        return out.view(b, n, k).permute(0, 2, 1)


def permutohedral_filter(features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Approximate Gaussian filter ``out[b, k, i] ~ sum_j exp(-|f_bi - f_bj|^2 / 2) values[b, k, j]``.

    Shape:
        - features: (B, d, N), already divided by their bandwidths.
        - values: (B, K, N).
        - output: (B, K, N) float32.
    """
    return PermutohedralLattice(features).filter(values)


def _enclosing_simplex(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Elevate (P, d) features onto H_d and find the enclosing simplex (Adams et al. 2010, §3.1).

    Returns ``rem0`` (P, d + 1) the nearest remainder-0 lattice point (float holding integers), ``rank``
    (P, d + 1) long, the rank of each coordinate's remainder, and the elevated features (P, d + 1).
    """
    p, d = f.shape
    # E's diagonal scaling, with the lattice's expected std folded in (Adams et al. 2010, p. 5-6).
    inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
    scale = torch.tensor([inv_std / math.sqrt((i + 2) * (i + 1)) for i in range(d)], dtype=f.dtype, device=f.device)
    cf = f * scale  # (P, d)
    suffix = cf.flip(1).cumsum(1).flip(1)  # suffix[i] = sum_{t >= i} cf[t]
    suffix = torch.cat([suffix, cf.new_zeros(p, 1)], dim=1)  # (P, d + 1), suffix[d] = 0
    steps = torch.arange(1, d + 1, dtype=f.dtype, device=f.device)
    elevated = suffix - torch.cat([cf.new_zeros(p, 1), cf * steps], dim=1)  # y = E f, on H_d
    # Nearest remainder-0 point by rounding each coordinate to a multiple of d + 1 (half to even, as the
    # SSE build of rloss rounds).
    down = torch.round(elevated * (1.0 / (d + 1)))  # (P, d + 1)
    rem0 = down * (d + 1)
    total = down.sum(dim=1, keepdim=True).long()  # (P, 1) the coordinate sum, off H_d when != 0
    diff = elevated - rem0
    # rank[i] = #{j > i: diff_i < diff_j} + #{j < i: diff_j >= diff_i}: rloss's tie order
    less = diff[:, :, None] < diff[:, None, :]  # (P, d + 1, d + 1) less[p, i, j] = diff_i < diff_j
    upper = torch.ones(d + 1, d + 1, dtype=torch.bool, device=f.device).triu(1)  # i < j
    rank = (less & upper).sum(2) + (~less & upper).sum(1)
    rank = rank + total
    # Bring points back onto the plane: wrap ranks outside [0, d] and move rem0 with them.
    wrap = (rank < 0).long() - (rank > d).long()
    rank = rank + wrap * (d + 1)
    rem0 = rem0 + wrap.to(rem0.dtype) * (d + 1)
    return rem0, rank, elevated


def _barycentric(elevated: torch.Tensor, rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Barycentric weights (P, d + 1) of the simplex corners (Adams et al. 2010, p. 10).

    With ``v = (elevated - rem0) / (d + 1)`` and ``a[j] = v[i]`` for the coordinate i of rank ``d - j`` (rank is
    a permutation of 0..d), corner j weighs ``a[j] - a[j - 1]`` and corner 0 ``1 + a[0] - a[d]``.
    """
    d = elevated.shape[1] - 1
    v = (elevated - rem0) * (1.0 / (d + 1))
    slot = (d - rank)[:, :, None] == torch.arange(d + 1, device=rank.device)  # (P, d + 1, d + 1) one-hot
    a = (v[:, :, None] * slot).sum(1)  # (P, d + 1) a one-hot sum, cheaper than a row-wise scatter on CPU
    return a - torch.cat([a[:, d:] - 1.0, a[:, :d]], dim=1)


def _simplex_vertices(rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Integer coordinates (P, d + 1, d) of the d + 1 corners of each point's simplex.

    Corner r is ``rem0 + canonical[r][rank]``, with the canonical simplex ``canonical[r][j] = r`` for
    ``j <= d - r`` and ``r - (d + 1)`` otherwise; the last coordinate is implied (coordinates sum to 0).
    """
    d = rank.shape[1] - 1
    r = torch.arange(d + 1, device=rank.device)
    canonical = torch.where(r[None, :] <= d - r[:, None], r[:, None], r[:, None] - (d + 1))  # (d + 1, d + 1)
    corner = canonical[:, rank[:, :d]].permute(1, 0, 2)  # (P, d + 1, d): canonical[r, rank[p, i]]
    return rem0[:, None, :d].long() + corner


@functools.lru_cache(maxsize=8)
def _steps(d: int, device: torch.device) -> torch.Tensor:
    """The moves (2 (d + 1), d) from a vertex to its neighbours, along lattice axes 0..d, each by -1 then +1:
    along axis ``a`` every coordinate moves by ``sign`` except coordinate ``a``, which moves by ``-sign * d`` (for
    ``a == d``, the implied last coordinate, all d stored coordinates move by ``sign``)."""
    sign = torch.tensor([-1, 1], device=device).repeat(d + 1)  # (2 (d + 1),)
    axis = torch.arange(d + 1, device=device).repeat_interleave(2)
    along = axis[:, None] == torch.arange(d, device=device)  # (2 (d + 1), d) the coordinate of the axis, if stored
    return sign[:, None] * (1 - (d + 1) * along.long())


class _VertexCoder:
    """Packs (batch item, d integer coordinates) into one int64, so that ``torch.unique`` and
    ``torch.searchsorted`` on 1-D codes act as the lattice's hash table."""

    def __init__(self, keys: torch.Tensor, items: int, margin: int) -> None:
        flat = keys.reshape(-1, keys.shape[-1])
        self.low = flat.min(dim=0).values - margin  # (d,) neighbours reach at most `margin` further
        spans = flat.max(dim=0).values + margin - self.low + 1  # (d,)
        sizes = [items] + spans.tolist()  # the host read that sizes the codes
        bits = sum(max(1, math.ceil(math.log2(s))) for s in sizes)
        if bits > _CODE_BITS:
            raise ValueError(
                f"lattice coordinates span {bits} bits, more than {_CODE_BITS}: the features are too spread "
                "for their bandwidths (check that they are divided by the sigmas)"
            )
        strides = []
        acc = 1
        for s in reversed(sizes):
            strides.append(acc)
            acc *= s
        strides.reverse()
        self.item_stride = strides[0]
        self.strides = torch.tensor(strides[1:], dtype=torch.long, device=keys.device)  # (d,)

    def encode(self, keys: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """keys (..., d) long, item (...) long -> codes (...) long."""
        return ((keys - self.low) * self.strides).sum(-1) + item * self.item_stride
