"""Batched K-means: one independent clustering per group (a group = one (layer, KV head)), all groups
advanced together with batched matrix products instead of a Python loop over heads and layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KMeansResult:
    labels: torch.Tensor     # [G, N] int64, cluster of every point
    counts: torch.Tensor     # [G, K] int64, points per cluster (0 = empty cluster)
    centers: torch.Tensor    # [G, K, D] float32, mean of the clustered (normalized) points
    iterations: int


def _sq_dist_to(points, point_sq, centers):
    """Squared distance of every point to one center per group: points [G,N,D], centers [G,D] -> [G,N]."""
    return (point_sq - 2.0 * torch.bmm(points, centers.unsqueeze(-1)).squeeze(-1)
            + centers.pow(2).sum(-1, keepdim=True)).clamp_min_(0.0)


def kmeans_plus_plus(points, k: int, generator: torch.Generator):
    """k-means++ seeding for every group at once: each new center is drawn with probability ~ D(x)^2."""
    G, N, D = points.shape
    point_sq = points.pow(2).sum(-1)
    group = torch.arange(G)
    centers = torch.empty(G, k, D, dtype=points.dtype)
    first = torch.randint(N, (G,), generator=generator)
    centers[:, 0] = points[group, first]
    nearest = _sq_dist_to(points, point_sq, centers[:, 0])
    for j in range(1, k):
        # All-zero distances (fewer distinct points than k) would break sampling: fall back to uniform.
        weights = nearest + (nearest.sum(-1, keepdim=True) <= 0).to(nearest.dtype)
        # Inverse-CDF sampling: one cumsum + searchsorted is much cheaper than torch.multinomial here.
        cdf = weights.cumsum(-1)
        u = torch.rand(G, 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max_(N - 1)
        centers[:, j] = points[group, pick]
        nearest = torch.minimum(nearest, _sq_dist_to(points, point_sq, centers[:, j]))
    return centers


def assign(points, centers, chunk_groups: int = 16):
    """Nearest center of every point ([G,N] int64), a few groups at a time to bound the [N,K] matrix."""
    labels = torch.empty(points.shape[:2], dtype=torch.int64)
    for g in range(0, points.shape[0], chunk_groups):
        p, c = points[g:g + chunk_groups], centers[g:g + chunk_groups]
        # argmin ||p - c||^2 = argmin (||c||^2 - 2 p.c); ||p||^2 is the same for every center.
        scores = torch.baddbmm(c.pow(2).sum(-1).unsqueeze(1), p, c.transpose(1, 2), beta=1.0, alpha=-2.0)
        labels[g:g + chunk_groups] = scores.argmin(-1)
    return labels


def cluster_sums(values, labels, k: int):
    """Per-cluster sums and counts: values [G,N,D], labels [G,N] -> sums [G,K,D], counts [G,K]."""
    G, N, D = values.shape
    sums = torch.zeros(G, k, D, dtype=values.dtype).scatter_add_(1, labels.unsqueeze(-1).expand(G, N, D), values)
    counts = torch.zeros(G, k, dtype=torch.int64).scatter_add_(1, labels, torch.ones_like(labels))
    return sums, counts


def kmeans(points, k: int, iterations: int = 12, seed: int = 0, seed_sample: int = 4) -> KMeansResult:
    """Lloyd's K-means with k-means++ seeding, stopping early once no label changes in any group.

    Seeding runs on a random subset of max(``seed_sample * k``, 2048) points per group (k steps over all
    N points would dominate the build time); Lloyd iterations then use every point.
    A cluster that loses all its points keeps its previous center (no 0/0) and reports count 0.
    """
    points = points.float().contiguous()
    G, N, _ = points.shape
    if not 1 <= k <= N:
        raise ValueError(f"k={k} must be in [1, {N}]")
    generator = torch.Generator().manual_seed(seed)
    sample = max(seed_sample * k, 2048)  # small inputs seed from every point
    if sample < N:
        subset = torch.rand(G, N, generator=generator).argsort(-1)[:, :sample]
        seed_points = points.gather(1, subset.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    else:
        seed_points = points
    centers = kmeans_plus_plus(seed_points, k, generator)
    labels = assign(points, centers)
    done = 0
    for done in range(1, iterations + 1):
        sums, counts = cluster_sums(points, labels, k)
        filled = counts > 0
        centers = torch.where(filled.unsqueeze(-1), sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype), centers)
        new_labels = assign(points, centers)
        changed = bool((new_labels != labels).any())
        labels = new_labels
        if not changed:
            break
    _, counts = cluster_sums(points[..., :1], labels, k)
    return KMeansResult(labels, counts, centers, done)
