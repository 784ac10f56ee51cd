"""The E(3)-equivariant denoiser: an EGNN (Satorras, Hoogeboom & Welling 2021) over ligand + pocket atoms.

Written on torch rather than taken from a library: e3nn's layers are tensor products of irreducible
representations (far more than a network with scalar features and one vector per atom needs), and
torch-geometric has no EGNN layer in its core; neither is in this environment. The layer is the paper's
equations (3)-(6):

    m_ij  = phi_e(h_i, h_j, |x_i - x_j|^2)
    x_i  <- x_i + sum_j (x_i - x_j) / (|x_i - x_j| + 1) * phi_x(m_ij) / n_i
    h_i  <- h_i + phi_h(h_i, sum_j m_ij / n_i)

with the difference normalised by (distance + 1) and sums averaged over the n_i atoms present, as E(3)
diffusion does for stable training. Ligand atoms receive messages from every atom present (ligand and pocket);
pocket atoms only send, and only ligand coordinates move (the pocket is fixed, TargetDiff's and DiffSBDD's
conditional setting). Distances are rotation and translation invariant and coordinate updates are sums of
difference vectors, so the output rotates with the input: rotating pocket and ligand together about the frame's
origin rotates the predicted coordinate noise (tested in float64).

Output, in the layout of x (B, N, 3 + K): the predicted clean ligand, as TargetDiff's network predicts x0
rather than the noise: the coordinates where the layers moved the ligand atoms (equivariant) and type features
from an MLP on the final ligand features (invariant). An epsilon predictor must be nearly exact at the noisiest
steps, where x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) multiplies its error by 1 / sqrt(a) (over 300 at the
cosine schedule's noisiest a): with a few sampling steps an untrained or briefly trained one blew samples up
to thousands of angstrom (measured); an x0 predictor starts at x_t and stays bounded.
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

    def forward(self, h_lig, x_lig, h_all, x_all, pair_mask):
        """Ligand atoms i (B, N, .) receive from all atoms j (B, M, .); pair_mask (B, N, M) is 1 where j messages i."""
        diff = x_lig[:, :, None] - x_all[:, None, :]                          # (B, N, M, 3): x_i - x_j
        dist2 = (diff ** 2).sum(-1, keepdim=True)
        n, m = h_lig.shape[1], h_all.shape[1]
        pair = torch.cat([h_lig[:, :, None].expand(-1, -1, m, -1), h_all[:, None].expand(-1, n, -1, -1), dist2], -1)
        msg = self.edge(pair) * pair_mask[..., None]
        count = pair_mask.sum(-1, keepdim=True).clamp_min(1)                 # (B, N, 1) neighbours present
        # + 1e-8 under the root: padded atoms coincide at the origin, and sqrt's gradient at 0 is infinite
        step = (diff / ((dist2 + 1e-8).sqrt() + 1) * self.coord(msg) * pair_mask[..., None]).sum(2) / count
        h_lig = h_lig + self.node(torch.cat([h_lig, msg.sum(2) / count], -1))
        return h_lig, x_lig + step


class EGNNDenoiser(nn.Module):
    """(x_ligand (B, N, 3 + K), t (B,), pocket) -> the clean ligand x0 (B, N, 3 + K).

    Node features: the ligand's K type features or the pocket's F element features (zero-padded to a common
    width), a ligand/pocket flag and the model time t, embedded to ``hidden``. Ligand atoms receive messages
    from every atom present (ligand and pocket) and update their features and coordinates; pocket atoms only
    send (their embedded features fixed through the layers), which costs N (N + P) messages instead of (N + P)^2."""

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
        h_lig = self.embed(torch.cat([nn.functional.pad(x[..., 3:], (0, width - self.k)), x.new_ones(b, n, 1),
                                      t_col.expand(b, n, 1)], -1))
        h_poc = self.embed(torch.cat([nn.functional.pad(pocket_feat.to(x.dtype), (0, width - self.f)),
                                      x.new_zeros(b, p, 1), t_col.expand(b, p, 1)], -1))
        pos_poc = pocket_pos.to(x.dtype)
        present = torch.cat([mask, pocket_mask], 1).to(x.dtype)               # (B, N + P) senders
        pair_mask = mask.to(x.dtype)[:, :, None] * present[:, None, :]
        pair_mask = pair_mask * (1 - torch.eye(n, n + p, dtype=x.dtype, device=x.device))  # no self-messages
        pos = x[..., :3]
        for layer in self.layers:
            h_lig, pos = layer(h_lig, pos, torch.cat([h_lig, h_poc], 1), torch.cat([pos, pos_poc], 1), pair_mask)
        return torch.cat([pos, self.type_out(h_lig)], -1)
