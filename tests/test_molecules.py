"""Diffusion in the zero-centre subspace (unnoise.centred) and the E(3)-equivariant network
(unnoise.models.egnn), against closed forms: the projected noise's covariance, the centre-free
Gaussian density, equivariance in float64, and the whole sampling path through Pipeline with the
exact denoiser of a finite set of molecules."""

import math

import pytest
import torch
from scipy import stats

from unnoise.centred import CentredSpace, centre, centred_log_density
from unnoise.conditioning import Condition
from unnoise.models.egnn import EGNN, EGNNConfig, egnn_tiny
from unnoise.models.interface import ModelInterface
from unnoise.oracle import finite_set
from unnoise.parameterization import EpsPrediction
from unnoise.pipeline import Pipeline, Settings
from unnoise.schedules import get_schedule

F64 = torch.float64


def _nodes(counts, slots):
    return torch.arange(slots)[None, :] < torch.as_tensor(counts)[:, None]


def test_projection_is_orthogonal_and_keeps_features():
    """P is idempotent and symmetric (<Px, y> = <x, Py>), centres the real positions and zeroes padding."""
    g = torch.Generator().manual_seed(0)
    nodes = _nodes([6, 3, 1], 6)
    x, y = (torch.randn(3, 6, 8, generator=g, dtype=F64) for _ in range(2))
    px = centre(x, nodes)
    assert torch.allclose(centre(px, nodes), px, atol=1e-14)
    assert torch.allclose((px * y).sum((1, 2)), (x * centre(y, nodes)).sum((1, 2)), atol=1e-12)
    assert (px[..., :3] * nodes[..., None]).sum(1).abs().max() < 1e-13
    assert px[~nodes].abs().max() == 0
    assert torch.equal(px[..., 3:][nodes], x[..., 3:][nodes])
    assert px[2, 0, :3].abs().max() == 0  # one atom: its position is its own centre


def test_projected_noise_has_the_subspace_covariance():
    """P z for z ~ N(0, I) is N(0, P): per axis the covariance of M real positions is I - 11^T / M.
    Each entry of the 4000-sample estimate has standard error about 1 / sqrt(4000) = 0.016."""
    g = torch.Generator().manual_seed(1)
    m, n = 5, 4000
    z = centre(torch.randn(n, 7, 4, generator=g, dtype=F64), _nodes([m] * n, 7))
    pos = z[:, :m, 0]  # one axis of the real slots
    cov = pos.T @ pos / n
    truth = torch.eye(m, dtype=F64) - 1 / m
    assert (cov - truth).abs().max() < 5 / math.sqrt(n)
    features = z[:, :m, 3]
    assert abs(features.var().item() - 1) < 5 * math.sqrt(2 / features.numel())


def test_centred_log_density_matches_the_density_in_a_basis_of_the_subspace():
    """In an orthonormal basis Q (M x (M - 1)) of the centred positions, x = Q y with y ~ N(Q^T mu,
    sigma^2 I) of dimension (M - 1) 3 (Hoogeboom et al. 2022, §3.2): the two log-densities agree."""
    g = torch.Generator().manual_seed(2)
    m, slots, sigma = 4, 6, 0.7
    nodes = _nodes([m, m], slots)
    x, mu = (centre(torch.randn(2, slots, 5, generator=g, dtype=F64), nodes) for _ in range(2))
    values, vectors = torch.linalg.eigh(torch.eye(m, dtype=F64) - 1 / m)  # eigenvalues 0 (along 1), then 1 ...
    basis = vectors[:, 1:]  # ... whose M - 1 eigenvectors are an orthonormal basis of the centred vectors
    assert values[0].abs() < 1e-12 and (values[1:] - 1).abs().max() < 1e-12
    for b in range(2):
        y = (basis.T @ x[b, :m, :3]).flatten().numpy()
        mean = (basis.T @ mu[b, :m, :3]).flatten().numpy()
        truth = stats.norm(mean, sigma).logpdf(y).sum()  # (M - 1) 3 independent coordinates
        assert centred_log_density(x, mu, sigma, nodes)[b].item() == pytest.approx(truth, abs=1e-10)
    with pytest.raises(ValueError, match="centred"):
        centred_log_density(x + 1, mu, sigma, nodes)


def _orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=F64))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("reflect", [False, True])
def test_egnn_is_e3_equivariant(reflect):
    """Rotating (or reflecting) and translating the input rotates the positions' output (a
    displacement: translation leaves it unchanged) and leaves the features' output unchanged, to
    1e-5 in float64 with random weights of unit scale."""
    torch.manual_seed(0)
    net = EGNN(EGNNConfig(max_atoms=7, features=5, hidden=32, layers=3, num_classes=3)).double()
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    nodes = _nodes([7, 4, 2], 7)
    x = centre(torch.randn(3, 7, 8, dtype=F64) * 1.5, nodes)
    cond = Condition(labels=torch.tensor([0, 2, 3]), nodes=nodes)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    q, shift = _orthogonal(3, reflect), torch.tensor([0.3, -2.0, 5.0], dtype=F64)
    moved = x.clone()
    moved[..., :3] = (x[..., :3] @ q.T + shift) * nodes[..., None]
    out, out_moved = net(x, t, cond), net(moved, t, cond)
    expected = torch.cat([out[..., :3] @ q.T, out[..., 3:]], -1)
    assert out.abs().max() > 0.1  # not trivially zero
    assert (out_moved - expected).abs().max() < 1e-5
    assert out[~nodes].abs().max() == 0
    assert (out[..., :3] * nodes[..., None]).sum(1).abs().max() < 1e-10  # in the zero-centre subspace


def test_egnn_ignores_padding():
    """What sits in padded slots does not change the output of the real ones."""
    torch.manual_seed(1)
    net = EGNN(egnn_tiny()).double()
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    nodes = _nodes([3], 6)
    x = centre(torch.randn(1, 6, 8, dtype=F64), nodes)
    junk = x.clone()
    junk[0, 3:] = torch.randn(3, 8, dtype=F64) * 10
    t = torch.tensor([0.4], dtype=F64)
    assert torch.allclose(net(x, t, Condition(nodes=nodes)), net(junk, t, Condition(nodes=nodes)), atol=1e-12)


class _SetOracle(torch.nn.Module):
    """The exact eps of a finite set of padded molecules, restricted to the members with the atom
    count cond.nodes asks for (the denoiser of the set given the count)."""

    def __init__(self, members: torch.Tensor, counts: torch.Tensor, schedule):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))  # a parameter, as pipelines read the dtype from one
        self.denoise = finite_set(members, counts).denoiser(schedule)
        self.schedule = schedule

    def forward(self, x, t, cond=None):
        labels = cond.nodes.sum(1)
        x0 = self.denoise(x, t, labels)
        a = self.schedule.alpha(t.double()).view(-1, 1, 1).to(x.dtype)
        s = self.schedule.sigma(t.double()).view(-1, 1, 1).to(x.dtype)
        return (x - a * x0) / s


def _members():
    """Four 'molecules' of 6 slots: two with 3 atoms, two with 5, centred, one-hot features x 0.25."""
    g = torch.Generator().manual_seed(4)
    counts = torch.tensor([3, 3, 5, 5])
    x = torch.randn(4, 6, 3, generator=g, dtype=F64) * 1.2
    kinds = torch.randint(0, 5, (4, 6), generator=g)
    x = torch.cat([x, 0.25 * torch.nn.functional.one_hot(kinds, 5).to(F64)], -1)
    return centre(x, _nodes(counts, 6)), counts


@pytest.mark.parametrize("sampler, steps", [("ddpm", 200), ("dpmpp_2m", 40)])
def test_pipeline_samples_a_finite_set_of_molecules_exactly(sampler, steps):
    """Through Pipeline with the exact denoiser: every sample is centred, lands on a member with its
    own count, and the members' masses match the truth p(count) / 2 (chi-square, 1200 samples: a
    10 % error in a count's probability gives chi2 about 12, p 5e-4). Counts are drawn by the space
    from its histogram p(3) = 0.3, p(5) = 0.7; the ancestral sampler's noise is projected each step."""
    members, counts = _members()
    schedule = get_schedule("vp")
    histogram = torch.zeros(7, dtype=F64)
    histogram[3], histogram[5] = 0.3, 0.7
    pipe = Pipeline.from_network(_SetOracle(members, counts, schedule), EpsPrediction(), schedule,
                                 ModelInterface((6, 8)), "cpu", space=CentredSpace(histogram), modality="molecule",
                                 defaults=Settings(sampler, steps, "karras", 1.0, 0.0, (0.0, 1.0), 0))
    n = 1200
    x = pipe.sample(n, progress=False).double()
    nodes = x.abs().sum(-1) > 0
    sizes = nodes.sum(1)
    assert set(sizes.tolist()) <= {3, 5}
    assert (x[..., :3] * nodes[..., None]).sum(1).abs().max() < 1e-4
    dist = torch.cdist(x.flatten(1), members.flatten(1))  # (n, 4)
    nearest = dist.argmin(1)
    assert dist.min(1).values.max() < 0.05
    assert torch.equal(counts[nearest], sizes)
    observed = torch.bincount(nearest, minlength=4).numpy()
    expected = n * torch.tensor([0.15, 0.15, 0.35, 0.35]).numpy()
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_space_draws_counts_per_sample_and_checks_given_nodes():
    """Sample i's count comes from its own generator: the same whatever the batch (first offset);
    the histogram's frequencies are met (binomial bound)."""
    histogram = torch.tensor([0, 0.2, 0.8], dtype=F64)
    space = CentredSpace(histogram)
    whole = space.complete(None, 2000, seed=3).nodes
    part = space.complete(None, 10, seed=3, first=100).nodes
    assert torch.equal(whole[100:110], part)
    share = (whole.sum(1) == 1).double().mean().item()
    assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 2000)
    given = Condition(nodes=_nodes([1, 2], 2))
    assert space.complete(given, 2, seed=0) is given
    with pytest.raises(ValueError, match="nodes"):
        space.complete(Condition(nodes=_nodes([1, 2, 2], 3)), 3, seed=0)
    with pytest.raises(ValueError, match="counts"):
        CentredSpace(torch.tensor([0.5, 0.5]))
