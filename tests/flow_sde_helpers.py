"""Two-sample and goodness-of-fit tests used by the flow-sampler tests (fixed seeds, stated α)."""

from __future__ import annotations

import torch
from scipy import stats


def energy_distance_test(x: torch.Tensor, y: torch.Tensor, num_permutations: int = 200, seed: int = 0):
    """Energy distance between samples x [n, d] and y [m, d] with a permutation p-value.

    Returns (statistic, p_value); p = (1 + #{permuted ≥ observed}) / (1 + num_permutations).
    """
    z = torch.cat([x, y]).to(torch.float64)
    n, total = len(x), len(x) + len(y)
    dist = torch.cdist(z, z)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(total, num_permutations + 1, dtype=torch.float64)
    labels[:n, 0] = 1.0
    for p in range(1, num_permutations + 1):
        labels[torch.randperm(total, generator=gen)[:n], p] = 1.0
    within_x = (labels * (dist @ labels)).sum(0)  # Σ_{i,j ∈ x} d_ij for each labelling
    row = dist.sum(1)
    to_x = (row[:, None] * labels).sum(0)  # Σ_{i ∈ x} Σ_j d_ij
    cross = to_x - within_x
    within_y = dist.sum() - 2 * to_x + within_x
    m = total - n
    energy = 2 * cross / (n * m) - within_x / n**2 - within_y / m**2
    p_value = (1 + (energy[1:] >= energy[0]).sum().item()) / (1 + num_permutations)
    return energy[0].item(), p_value


def component_tests(mixture, x: torch.Tensor) -> dict[str, float]:
    """p-values that x ~ mixture, per component after classifying each point by its posterior at t = 0:
    weights (χ² goodness of fit), means (Hotelling T² with the known covariance, χ²_d) and covariances
    (likelihood-ratio test of Σ = Σ_k with estimated mean, χ²_{d(d+1)/2})."""
    x = x.to(torch.float64)
    n, d = x.shape
    comps = mixture.component_posterior(x).argmax(-1)
    counts = torch.bincount(comps, minlength=mixture.num_components).double()
    out = {"weights": stats.chisquare(counts.numpy(), (mixture.weights * n).numpy()).pvalue}
    for k in range(mixture.num_components):
        xk = x[comps == k]
        nk = len(xk)
        chol = torch.linalg.cholesky(mixture.covariances[k])
        white = torch.linalg.solve_triangular(chol, (xk - mixture.means[k]).T, upper=False).T  # ~ N(0, I)
        t2 = nk * (white.mean(0) ** 2).sum().item()
        out[f"mean{k}"] = stats.chi2.sf(t2, d)
        s = torch.cov(white.T, correction=1).reshape(d, d)
        lrt = nk * (torch.trace(s) - torch.logdet(s) - d).item()
        out[f"cov{k}"] = stats.chi2.sf(lrt, d * (d + 1) // 2)
    return out


def one_intra_op_thread():
    """Generator for a fixture: run with one intra-op thread, then restore.

    The flow tests move small tensors (tiny pipelines, [2000, 4, 2] toy batches), where intra-op threads only add
    barrier waits; on a loaded 2-core machine those cost 5-15x (measured: a 200-step toy run 23 s vs 1.7 s, a tiny
    FLUX call 3.7 s vs 0.26 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
