"""Motion nodes: a sparse set of control points whose rigid motions carry the Gaussians.

Why: a per-Gaussian offset field (HexPlane + MLP at every Gaussian) couples Gaussians only
within one grid cell, so the photometric gradient cannot turn a thin part as a whole: measured on
the windmill, the blades of frames away from the middle were lost (5 deg/frame learnt instead of
15) or faded out by shrinking. Here the deformation network runs at K nodes spread over the
object (embedded deformation, as in SC-GS); each node gets a rotation and a translation per
frame, and every Gaussian follows its k nearest nodes by linear blend skinning:

    x' = sum_j w_j (R_j (x - p_j) + p_j + t_j),      q' = normalise(sum_j w_j q_j) * q

with embedded-deformation weights w_j ~ (1 - d_j / d_{k+1})^2. A whole blade shares a few nodes,
so the gradient of all its pixels turns it together, and a Gaussian cannot fade by shrinking
(no per-frame scale). Nodes are placed by farthest-point sampling, weighted so that dynamic
regions (DSFD's dynamic part) get more of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def farthest_points(points: Tensor, k: int, weights: Tensor | None = None, seed: int = 0) -> Tensor:
    """Indices [min(k, N)] of greedy farthest-point samples of ``points`` [N, 3].

    With ``weights`` [N] (>= 0) the distance is multiplied by the weight: heavier regions are
    sampled more densely (a point of weight 2 counts as twice as far from the chosen ones).
    """
    n = points.shape[0]
    k = min(k, n)
    pts = points.detach().double()
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.detach().double().clamp_min(1e-6)
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=gen))
    dist = torch.full((n,), float("inf"), dtype=torch.float64)
    for i in range(1, k):
        dist = torch.minimum(dist, (pts - pts[chosen[i - 1]]).norm(dim=-1))
        chosen[i] = int(torch.argmax(dist * w))
    return chosen


@dataclass
class Binding:
    """Each Gaussian's k nodes and their skinning weights (rows sum to 1)."""

    index: Tensor  # [N, k] long
    weight: Tensor  # [N, k]


def bind(points: Tensor, nodes: Tensor, k: int = 4) -> Binding:
    """Embedded-deformation weights of ``points`` [N, 3] on their ``k`` nearest ``nodes`` [K, 3]."""
    from scipy.spatial import cKDTree

    k = max(1, min(k, nodes.shape[0] - 1)) if nodes.shape[0] > 1 else 1
    tree = cKDTree(nodes.detach().cpu().double().numpy())
    dist, idx = tree.query(points.detach().cpu().double().numpy(), k=k + 1 if nodes.shape[0] > k else k)
    dist, idx = np.atleast_2d(dist), np.atleast_2d(idx)
    if dist.shape[1] > k:
        dmax = dist[:, k:k + 1] + 1e-9
        dist, idx = dist[:, :k], idx[:, :k]
    else:
        dmax = dist[:, -1:] * 1.5 + 1e-9
    w = np.clip(1.0 - dist / dmax, 0.0, 1.0) ** 2 + 1e-8
    w = w / w.sum(1, keepdims=True)
    device = points.device
    return Binding(torch.from_numpy(idx).long().to(device), torch.from_numpy(w).to(points.dtype).to(device))


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of (w, x, y, z) quaternions, broadcast."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def skin(means: Tensor, quats: Tensor, nodes: Tensor, node_quats: Tensor, node_shift: Tensor,
         binding: Binding) -> tuple[Tensor, Tensor]:
    """Blend the nodes' rigid motions onto the Gaussians.

    ``means`` [N, 3], ``quats`` [N, 4] (canonical); ``nodes`` [K, 3]; ``node_quats`` [B, K, 4]
    (unit), ``node_shift`` [B, K, 3]. Returns deformed means [B, N, 3] and quats [B, N, 4].
    """
    from ds4d_cli.render.projection import quat_to_rotmat

    idx, w = binding.index, binding.weight  # [N, k]
    rot = quat_to_rotmat(node_quats)  # [B, K, 3, 3]
    rel = means[:, None, :] - nodes[idx]  # [N, k, 3]
    moved = torch.einsum("bnkij,nkj->bnki", rot[:, idx], rel) + nodes[idx] + node_shift[:, idx]  # [B, N, k, 3]
    new_means = (w[None, :, :, None] * moved).sum(2)
    q = (w[None, :, :, None] * node_quats[:, idx]).sum(2)  # nodes' rotations stay in one hemisphere
    q = torch.nn.functional.normalize(q, dim=-1)
    return new_means, quat_multiply(q, quats.unsqueeze(0))


def node_neighbours(nodes: Tensor, m: int = 6) -> Tensor:
    """[K, m] indices of each node's m nearest other nodes (for the rigidity term)."""
    from scipy.spatial import cKDTree

    m = min(m, nodes.shape[0] - 1)
    if m < 1:
        return torch.zeros(nodes.shape[0], 0, dtype=torch.long, device=nodes.device)
    _, idx = cKDTree(nodes.detach().cpu().double().numpy()).query(nodes.detach().cpu().double().numpy(), k=m + 1)
    return torch.from_numpy(np.atleast_2d(idx)[:, 1:]).long().to(nodes.device)


def rigidity(nodes: Tensor, node_quats: Tensor, node_shift: Tensor, neighbours: Tensor) -> Tensor:
    """As-rigid-as-possible between neighbouring nodes: each node's rotation should carry its
    neighbours' offsets, ||(p_l' - p_j') - R_j (p_l - p_j)||^2, mean over pairs and frames."""
    from ds4d_cli.render.projection import quat_to_rotmat

    if neighbours.shape[1] == 0:
        return nodes.new_zeros(())
    moved = nodes.unsqueeze(0) + node_shift  # [B, K, 3]
    rest = nodes[neighbours] - nodes[:, None, :]  # [K, m, 3]
    now = moved[:, neighbours] - moved[:, :, None, :]  # [B, K, m, 3]
    pred = torch.einsum("bkij,kmj->bkmi", quat_to_rotmat(node_quats), rest)
    return (now - pred).pow(2).sum(-1).mean()
