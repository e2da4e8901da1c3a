"""Batched K-means invariants (synthetic points: fast, exact expectations)."""

import torch

from squeezed_attention.kmeans import assign, kmeans


def blobs(groups=6, per_blob=40, blobs_per_group=5, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Orthogonal blob centers (random signs): far apart, so k-means++ seeds one center per blob.
    signs = torch.randint(0, 2, (groups, blobs_per_group, 1), generator=g) * 2.0 - 1.0
    centers = torch.eye(dim)[:blobs_per_group].expand(groups, -1, -1) * signs
    pts = centers.repeat_interleave(per_blob, dim=1) + 0.02 * torch.randn(groups, blobs_per_group * per_blob, dim, generator=g)
    return torch.nn.functional.normalize(pts, dim=-1)


def test_labels_counts_and_nearest_center_invariants():
    pts = blobs()
    res = kmeans(pts, k=5, seed=3)
    G, N, _ = pts.shape
    assert res.labels.shape == (G, N) and res.counts.shape == (G, 5) and res.centers.shape == (G, 5, 16)
    assert int(res.labels.min()) >= 0 and int(res.labels.max()) < 5
    assert torch.equal(res.counts.sum(-1), torch.full((G,), N))
    for g in range(G):
        assert torch.equal(torch.bincount(res.labels[g], minlength=5), res.counts[g])
    # Converged: every point's label is its nearest center, and each center is its cluster's mean.
    assert torch.equal(assign(pts, res.centers), res.labels)
    for g in range(G):
        for j in range(5):
            members = pts[g][res.labels[g] == j]
            assert torch.allclose(members.mean(0), res.centers[g, j], atol=1e-5)
    # Well-separated blobs are recovered exactly: each blob of 40 points is one cluster.
    assert sorted(res.counts[0].tolist()) == [40] * 5


def test_seeded_and_deterministic():
    pts = blobs(seed=1)
    a, b = kmeans(pts, 7, seed=11), kmeans(pts, 7, seed=11)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)


def test_more_clusters_than_distinct_points_gives_empty_clusters_not_nan():
    pts = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    pts = pts.repeat(10, 1).unsqueeze(0).repeat(3, 1, 1)  # 20 points, only 2 distinct
    res = kmeans(pts, k=6, seed=0)
    assert torch.isfinite(res.centers).all()
    assert torch.equal(res.counts.sum(-1), torch.full((3,), 20))
    assert int((res.counts > 0).sum(-1).max()) == 2  # the other 4 clusters are empty (count 0)
