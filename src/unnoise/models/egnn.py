"""The E(n)-equivariant graph network (Satorras et al. 2021, "E(n) Equivariant Graph Neural
Networks", eqs. 3-6) as a denoiser of point sets, with the changes Hoogeboom et al. 2022 ("Equivariant
Diffusion for Molecule Generation in 3D", §3.3 and their Appendix B) make for diffusion.

A sample is a padded set (N, 3 + F): per slot a position x_i and features h_i (a molecule's atom:
its coordinates and its scaled one-hot element); cond.nodes (B, N) says which slots are real. Every
real atom is joined to every other. One layer, for real i, j != i:

    m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, |x_i^0 - x_j^0|^2)                  (eq. 3, and the input distances)
    x_i <- x_i + mean_j (x_i - x_j) / (|x_i - x_j| + 1) * r tanh(phi_x(m_ij))  (eq. 4, normalised and bounded)
    h_i <- h_i + phi_h(h_i, mean_j e_ij m_ij),   e_ij = sigmoid(phi_inf(m_ij))  (eqs. 5-6, soft edges §3.3)

Dividing the difference by (distance + 1) and bounding the step by r tanh(.) keep the positions
finite when two atoms of a noisy sample nearly coincide (Hoogeboom et al. 2022, App. B); averaging
over neighbours (Satorras sum) keeps the scale of an update independent of the molecule's size.
Distances and features are invariant under rotations, reflections and translations, and position
updates are sums of differences, so the network is E(3)-equivariant.

The time t (and a class label) enter as an embedding added to the first node features; the output
is, per real slot, the position displacement x^L - x^0 with its mean over the set removed (a vector
in the zero-centre subspace, what eps of the positions is) and the features read out linearly;
padded slots output 0.

    net = EGNN(EGNNConfig(max_atoms=29, features=5))
    out = net(x, t, Condition(nodes=nodes))        # (B, 29, 8), equivariant in x[..., :3]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unnoise.centred import POSITION_DIMS, centre
from unnoise.conditioning import as_condition
from unnoise.models.embeddings import Cond, ConditionEmbedding, zero_
from unnoise.models.interface import ModelInterface, check_fields


@dataclass(frozen=True)
class EGNNConfig:
    max_atoms: int = 29  # slots of a padded set, N (QM9's largest molecule has 29 atoms)
    features: int = 5  # features per slot after its position, F (QM9: one-hot H, C, N, O, F)
    hidden: int = 128  # width of node features and messages
    layers: int = 6  # EGNN layers
    num_classes: int = 0  # class labels (0 = unconditional); label num_classes is the null label
    coords_range: float = 15.0  # r: a position update's factor per neighbour is at most r (Hoogeboom et al. 2022)
    time_scale: float = 1000.0  # the time is embedded as sin/cos of time_scale * t

    def __post_init__(self) -> None:
        check_fields(self, ("max_atoms", "features", "hidden", "layers"), ("coords_range", "time_scale"))

    @property
    def interface(self) -> ModelInterface:
        return ModelInterface((self.max_atoms, POSITION_DIMS + self.features), self.num_classes)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, outputs))


class EGNNLayer(nn.Module):
    """One layer (eqs. 3-6) over a batch's real atoms and edges; the first linear map of phi_e is split
    into per-node parts, so the per-edge work is one hidden x hidden product (the same function,
    computed N times cheaper)."""

    def __init__(self, hidden: int, coords_range: float):
        super().__init__()
        self.src, self.dst = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden, bias=False)
        self.dist = nn.Linear(2, hidden, bias=False)  # |x_i - x_j|^2 and the input's |x_i^0 - x_j^0|^2
        self.edge = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())  # the rest of phi_e
        self.gate = nn.Linear(hidden, 1)  # phi_inf: soft edges (Satorras et al. 2021, §3.3)
        self.node = _mlp(2 * hidden, hidden, hidden)  # phi_h
        self.coord = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1, bias=False))  # phi_x
        # a fresh layer barely moves the atoms (EDM initialises phi_x's last layer with gain 0.001 too):
        # r tanh(.) with r = 15 A would otherwise throw them far apart before anything is learned
        nn.init.xavier_uniform_(self.coord[-1].weight, gain=0.001)
        self.norm = nn.LayerNorm(hidden)
        self.coords_range = coords_range

    def forward(self, h: Tensor, x: Tensor, graph: Graph) -> tuple[Tensor, Tensor]:
        """h (V, H) and x (V, 3) of the V real atoms of a batch; graph: its edges."""
        src, dst = graph.src, graph.dst
        diff = x[src] - x[dst]  # (E, 3): x_i - x_j
        d2 = (diff**2).sum(-1, keepdim=True)  # (E, 1)
        m = self.edge(self.src(h)[src] + self.dst(h)[dst] + self.dist(torch.cat([d2, graph.d0], -1)))  # eq. 3
        w = graph.weight  # (E, 1): 1 / the receiving atom's neighbours
        step = torch.tanh(self.coord(m)) * self.coords_range  # (E, 1)
        # eq. 4, normalised; the 1e-8 keeps sqrt's derivative finite where two atoms coincide
        x = x.index_add(0, src, diff / ((d2 + 1e-8).sqrt() + 1) * step * w)
        message = torch.zeros_like(h).index_add_(0, src, torch.sigmoid(self.gate(m)) * m * w)  # eq. 5, soft edges
        h = h + self.node(torch.cat([self.norm(h), message], -1))  # eq. 6, residual
        return h, x


@dataclass(frozen=True)
class Graph:
    """A batch's real atoms and the edges between every two of them in a molecule (both directions)."""

    atoms: Tensor  # (V,) index of each real atom in the flattened (B N) slots
    src: Tensor  # (E,) receiving atom i of each edge, an index into the V atoms
    dst: Tensor  # (E,) sending atom j
    d0: Tensor  # (E, 1) |x_i - x_j|^2 of the input
    weight: Tensor  # (E, 1) 1 / (atoms in i's molecule - 1): messages are averaged

    @classmethod
    def of(cls, pos: Tensor, nodes: Tensor) -> Graph:
        """From positions (B, N, 3) and nodes (B, N): only real pairs, so a batch of small molecules
        costs what its atoms do, not what its padding does."""
        batch, slots = nodes.shape
        flat = nodes.flatten()
        atoms = flat.nonzero().squeeze(1)  # (V,)
        where = torch.full((batch * slots,), -1, dtype=torch.long, device=nodes.device)
        where[atoms] = torch.arange(len(atoms), device=nodes.device)
        eye = torch.eye(slots, dtype=torch.bool, device=nodes.device)
        b, i, j = (nodes[:, :, None] & nodes[:, None, :] & ~eye).nonzero(as_tuple=True)
        src, dst = where[b * slots + i], where[b * slots + j]
        flat_pos = pos.reshape(-1, POSITION_DIMS)[atoms]
        d0 = ((flat_pos[src] - flat_pos[dst]) ** 2).sum(-1, keepdim=True)
        degree = (nodes.sum(1) - 1).clamp(min=1).to(pos.dtype)[b].unsqueeze(1)
        return cls(atoms, src, dst, d0, 1 / degree)


class EGNN(nn.Module):
    def __init__(self, config: EGNNConfig):
        super().__init__()
        self.config = c = config
        self.embed = ConditionEmbedding(c.hidden, c.num_classes, time_scale=c.time_scale)
        self.input = nn.Linear(c.features, c.hidden)
        self.layers = nn.ModuleList(EGNNLayer(c.hidden, c.coords_range) for _ in range(c.layers))
        self.output = nn.Sequential(nn.LayerNorm(c.hidden), zero_(nn.Linear(c.hidden, c.features)))

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        """x (B, N, 3 + F), t (B,), cond: a Condition whose nodes (B, N) marks the real slots (None:
        every slot real) and labels (B,) on a class-conditional network. -> (B, N, 3 + F)."""
        c = self.config
        if x.ndim != 3 or tuple(x.shape[1:]) != c.interface.sample_shape:
            raise ValueError(f"expected point sets of shape (B, {c.max_atoms}, {POSITION_DIMS + c.features}), "
                             f"got {tuple(x.shape)}")
        nodes = getattr(as_condition(cond), "nodes", None)
        nodes = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if nodes is None else nodes.to(x.device)
        graph = Graph.of(x[..., :POSITION_DIMS], nodes)
        flat = x.reshape(-1, x.shape[-1])[graph.atoms]  # (V, 3 + F)
        pos0, feats = flat[:, :POSITION_DIMS], flat[:, POSITION_DIMS:]
        emb, _ = self.embed(t, cond, x.shape[0])  # (B, H)
        h, pos = self.input(feats) + emb.repeat_interleave(x.shape[1], 0)[graph.atoms], pos0
        for layer in self.layers:
            h, pos = layer(h, pos, graph)
        out = x.new_zeros(x.shape[0] * x.shape[1], x.shape[-1])
        out[graph.atoms] = torch.cat([pos - pos0, self.output(h)], dim=-1)
        return centre(out.view_as(x), nodes)  # displacement's mean removed, padded slots 0


def egnn_qm9() -> EGNNConfig:
    """For QM9 with hydrogens on a CPU: 6 layers of width 96 (EDM's model has 9 of 256)."""
    return EGNNConfig(max_atoms=29, features=5, hidden=96, layers=6)


def egnn_tiny() -> EGNNConfig:
    """For tests: 2 layers of width 16 over 6 slots."""
    return EGNNConfig(max_atoms=6, features=5, hidden=16, layers=2)


EGNN_PRESETS = {"egnn_qm9": egnn_qm9, "egnn_tiny": egnn_tiny}
