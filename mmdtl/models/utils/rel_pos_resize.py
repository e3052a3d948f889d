"""Resize of Swin/BEiT relative-position bias tables without SciPy's ``interp2d``.

Fine-tuning Swin with another window size (e.g. window 12 at 384 px from a
window-7 checkpoint) resizes every ``relative_position_bias_table`` while
loading, in mmpretrain's ``resize_relative_position_bias_table``. That
function calls ``scipy.interpolate.interp2d``, which SciPy 1.14 removed, so
the load fails in our stack for ``SwinTransformer`` and ``DTLSwin`` alike.

:func:`resize_relative_position_bias_table` computes the same table with
torch alone, and :func:`patch_mmpretrain_rel_pos_resize` (called when
``mmdtl`` is imported) puts it in place of mmpretrain's function in the
modules that call it, so the parent backbones load such checkpoints too.

What the original computes, per head: the ``S x S`` table (``S = 2W - 1``)
is taken as samples of a function on a non-uniform grid whose spacing grows
geometrically from the centre (BEiT's scheme, kept as is here), then
``interp2d(x, y, z, kind='cubic')`` is evaluated on the uniform target grid
``-T..T`` (``T = S' // 2``). On gridded data ``interp2d`` fits FITPACK's
interpolating bicubic spline (``regrid`` with ``s=0``: knots at the data
points except the second and second-to-last, i.e. the not-a-knot spline in
each axis) and evaluates it with ``bisplev``, which clamps points outside
the data range to its ends. SciPy's interp2d transition guide names
``RectBivariateSpline(x, y, z.T, kx=3, ky=3, s=0)(xnew, ynew).T`` as the
exact replacement on a grid. The tensor-product not-a-knot spline is linear
in the data, so here it is one matrix ``W`` per axis (solved in float64) and
the table is ``W @ z @ W.T``. ``tests/test_models/test_parity.py`` checks it
against ``RectBivariateSpline`` and SciPy's ``make_interp_spline``; a
one-off check against mmpretrain 1.2.0's own function under SciPy 1.13.1
(the last release with ``interp2d``) gave bit-identical float32 tables for
windows 7 -> 12, 7 -> 14, 12 -> 7, 3 -> 5 and 7 -> 8.
"""
from typing import List

import torch

__all__ = ['resize_relative_position_bias_table', 'patch_mmpretrain_rel_pos_resize']


def beit_rel_pos_grids(src_shape: int, dst_shape: int):
    """The source (geometric) and target (uniform) sample positions of
    mmpretrain's resize, computed as it does."""

    def geometric_progression(a, r, n):
        return a * (1.0 - r**n) / (1.0 - r)

    # Bisection for the ratio q that stretches src_shape // 2 steps to
    # reach dst_shape // 2, as the original (same floats, same order).
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if geometric_progression(1, q, src_shape // 2) > dst_shape // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src_shape // 2):
        dis.append(cur)
        cur += q**(i + 1)
    src = [-d for d in reversed(dis)] + [0] + dis
    half = dst_shape // 2
    dst = [float(i) for i in range(-half, half + 1)]
    return src, dst


def not_a_knot_cubic_matrix(nodes: List[float], points: List[float]) -> torch.Tensor:
    """``W`` (len(points) x len(nodes)), float64: the not-a-knot cubic spline
    through ``(nodes, y)`` evaluated at ``points`` is ``W @ y``.

    Points outside ``[nodes[0], nodes[-1]]`` are clamped to it, as FITPACK's
    ``bisplev`` does.
    """
    x = torch.tensor(nodes, dtype=torch.float64)
    num = len(nodes)
    if num < 4:
        raise ValueError(f'a cubic spline needs at least 4 nodes, got {num} (a relative '
                         f'position table of a window smaller than 3 cannot be resized)')
    if not bool((x[1:] > x[:-1]).all()):
        raise ValueError('spline nodes must increase strictly')
    n, h = num - 1, (x[1:] - x[:-1])
    # Unknowns: (a, b, c, d) of p_i(s) = a + b s + c s^2 + d s^3 on interval i.
    rows = torch.zeros(4 * n, 4 * n, dtype=torch.float64)
    rhs = torch.zeros(4 * n, num, dtype=torch.float64)
    r = 0
    for i in range(n):
        c = 4 * i
        rows[r, c] = 1.  # p_i(0) = y_i
        rhs[r, i] = 1.
        r += 1
        rows[r, c:c + 4] = torch.stack([torch.ones_like(h[i]), h[i], h[i]**2, h[i]**3])
        rhs[r, i + 1] = 1.  # p_i(h_i) = y_{i+1}
        r += 1
    for i in range(1, n):  # C1 and C2 at the interior nodes
        c, hp = 4 * i, h[i - 1]
        rows[r, c - 3:c] = torch.stack([torch.ones_like(hp), 2 * hp, 3 * hp**2])
        rows[r, c + 1] = -1.
        r += 1
        rows[r, c - 2:c] = torch.stack([2 * torch.ones_like(hp), 6 * hp])
        rows[r, c + 2] = -2.
        r += 1
    # Not-a-knot: C3 at the second and second-to-last node.
    rows[r, 3], rows[r, 7] = 1., -1.
    r += 1
    rows[r, 4 * (n - 2) + 3], rows[r, 4 * (n - 1) + 3] = 1., -1.
    coeffs = torch.linalg.solve(rows, rhs).view(n, 4, num)

    q = torch.tensor(points, dtype=torch.float64).clamp(x[0], x[-1])
    interval = (torch.searchsorted(x, q, right=True) - 1).clamp(0, n - 1)
    s = q - x[interval]
    powers = torch.stack([torch.ones_like(s), s, s**2, s**3], dim=1)  # (P, 4)
    return torch.einsum('pk,pkj->pj', powers, coeffs[interval])


def resize_relative_position_bias_table(src_shape: int, dst_shape: int,
                                        table: torch.Tensor, num_head: int) -> torch.Tensor:
    """Drop-in for mmpretrain's ``resize_relative_position_bias_table``.

    Args:
        src_shape (int): Side of the source table (``2 * window - 1``).
        dst_shape (int): Side of the target table.
        table (Tensor): The source table, ``(src_shape ** 2, num_head)``.
        num_head (int): Number of attention heads.

    Returns:
        Tensor: The resized table, ``(dst_shape ** 2, num_head)``, float32 on
        ``table``'s device (as the original returns).
    """
    src, dst = beit_rel_pos_grids(src_shape, dst_shape)
    weight = not_a_knot_cubic_matrix(src, dst)  # same grid on both axes
    z = table[:, :num_head].detach().to('cpu', torch.float32).to(torch.float64)
    z = z.T.reshape(num_head, src_shape, src_shape)  # per head: rows are y, columns x
    resized = weight @ z @ weight.T  # (num_head, dst, dst)
    return resized.reshape(num_head, -1).T.to(table.device, torch.float32).contiguous()


def patch_mmpretrain_rel_pos_resize() -> None:
    """Use :func:`resize_relative_position_bias_table` in mmpretrain.

    mmpretrain's Swin and BEiT backbones call their module-level import of
    the function from their ``_load_from_state_dict`` pre-hooks, so the name
    is replaced in those modules and in ``mmpretrain.models.utils``. Done at
    every import of mmdtl, whatever SciPy is installed, so results do not
    depend on it (the replacement equals the original up to float rounding).
    Idempotent.
    """
    import importlib

    for name in ('mmpretrain.models.utils', 'mmpretrain.models.utils.embed',
                 'mmpretrain.models.backbones.swin_transformer',
                 'mmpretrain.models.backbones.beit'):
        module = importlib.import_module(name)
        if hasattr(module, 'resize_relative_position_bias_table'):
            module.resize_relative_position_bias_table = resize_relative_position_bias_table

