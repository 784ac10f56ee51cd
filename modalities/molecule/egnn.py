"""The E(3)-equivariant denoiser: an EGNN (Satorras, Hoogeboom & Welling 2021) over ligand + pocket atoms.

Written on torch rather than taken from a library: e3nn's layers are tensor products of irreducible
representations (far more than a network with scalar features and one vector per atom needs), and
torch-geometric has no EGNN layer in its core; neither is in this environment. The layer is the paper's
equations (3)-(6):

    m_ij  = phi_e(h_i, h_j, |x_i - x_j|^2)
    x_i  <- x_i + sum_j (x_i - x_j) / (|x_i - x_j| + 1) * phi_x(m_ij) / n_i
    h_i  <- h_i + phi_h(h_i, sum_j m_ij / n_i)

with the difference normalised by (distance + 1) and sums averaged over the n_i atoms present, as E(3)
diffusion does for stable training. Messages run over every pair of atoms present (ligand-ligand,
ligand-pocket, pocket-pocket); only ligand coordinates move (the pocket is fixed, TargetDiff's and DiffSBDD's
conditional setting). Distances are rotation and translation invariant and coordinate updates are sums of
difference vectors, so the output rotates with the input: rotating pocket and ligand together about the frame's
origin rotates the predicted coordinate noise (tested in float64).

Output, in the layout of x (B, N, 3 + K): the coordinate noise is the ligand's total displacement across the
layers (x_out - x_in, a vector, equivariant); the feature noise is a linear map of the final ligand features
(invariant).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["EGNNLayer", "EGNNDenoiser"]


class EGNNLayer(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.edge = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.coord = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1, bias=False))
        self.node = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        # small initial coordinate updates (E(3) diffusion initialises this layer with gain 0.001)
        nn.init.xavier_uniform_(self.coord[-1].weight, gain=0.001)

    def forward(self, h, x, pair_mask, movable):
        """h (B, M, H), x (B, M, 3), pair_mask (B, M, M) (1 where j messages i), movable (B, M, 1)."""
        diff = x[:, :, None] - x[:, None, :]                                  # (B, M, M, 3): x_i - x_j
        dist2 = (diff ** 2).sum(-1, keepdim=True)
        m = h.shape[1]
        pair = torch.cat([h[:, :, None].expand(-1, -1, m, -1), h[:, None].expand(-1, m, -1, -1), dist2], -1)
        msg = self.edge(pair) * pair_mask[..., None]
        count = pair_mask.sum(-1, keepdim=True).clamp_min(1)                 # (B, M, 1) neighbours present
        step = (diff / (dist2.sqrt() + 1) * self.coord(msg) * pair_mask[..., None]).sum(2) / count
        x = x + step * movable
        h = h + self.node(torch.cat([h, msg.sum(2) / count], -1))
        return h, x


class EGNNDenoiser(nn.Module):
    """(x_ligand (B, N, 3 + K), t (B,), pocket) -> noise prediction (B, N, 3 + K).

    Node features: the ligand's K type features or the pocket's F element features (zero-padded to a common
    width), a ligand/pocket flag and the model time t, embedded to ``hidden``."""

    def __init__(self, num_atom_types: int, num_pocket_features: int, hidden: int = 64, layers: int = 4):
        super().__init__()
        self.k, self.f = int(num_atom_types), int(num_pocket_features)
        width = max(self.k, self.f) + 2
        self.embed = nn.Linear(width, hidden)
        self.layers = nn.ModuleList(EGNNLayer(hidden) for _ in range(int(layers)))
        self.type_out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, self.k))

    def forward(self, x, t, mask, pocket_pos, pocket_feat, pocket_mask):
        b, n = x.shape[:2]
        p = pocket_pos.shape[1]
        width = max(self.k, self.f)
        t_col = t.to(x.dtype).reshape(b, 1, 1)
        lig_h = torch.cat([nn.functional.pad(x[..., 3:], (0, width - self.k)), x.new_ones(b, n, 1),
                           t_col.expand(b, n, 1)], -1)
        poc_h = torch.cat([nn.functional.pad(pocket_feat.to(x.dtype), (0, width - self.f)), x.new_zeros(b, p, 1),
                           t_col.expand(b, p, 1)], -1)
        h = self.embed(torch.cat([lig_h, poc_h], 1))
        pos = torch.cat([x[..., :3], pocket_pos.to(x.dtype)], 1)
        present = torch.cat([mask, pocket_mask], 1).to(x.dtype)               # (B, M)
        pair_mask = present[:, :, None] * present[:, None, :]
        pair_mask = pair_mask * (1 - torch.eye(n + p, dtype=x.dtype, device=x.device))
        movable = torch.cat([mask.to(x.dtype), x.new_zeros(b, p)], 1)[..., None]
        start = pos
        for layer in self.layers:
            h, pos = layer(h, pos, pair_mask, movable)
        eps_x = (pos - start)[:, :n]
        eps_h = self.type_out(h[:, :n])
        return torch.cat([eps_x, eps_h], -1)
