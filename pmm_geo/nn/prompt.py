from typing import Mapping, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Dropout, Linear, Module

from ..data.adjacency import as_adjacency
from .conv import BipartiteConv
from ._checks import check_positive

# Up to this feature width the principal axes come exactly from the float64
# covariance (d_m x d_m eigendecomposition, O(I d_m^2)); wider features use a
# seeded randomized SVD (Halko et al., 2009), O(I d_m k), as sklearn's PCA
# does on big inputs (an exact 21k x 4096 decomposition takes minutes).
EXACT_PCA_MAX_DIM = 2048
# Rows per chunk when accumulating the covariance (bounds the float64 copy).
_COV_CHUNK_ROWS = 1 << 12


def pca(x: Tensor, num_components: int, oversample: int = 10,
        num_iters: int = 4, seed: int = 0) -> Tensor:
    r"""Principal-component scores :math:`(\mathbf{X} - \bar{\mathbf{x}})
    \mathbf{V}_k` of the rows of :obj:`x`, with a fixed sign convention:
    in every component (column of :math:`\mathbf{V}_k`) the loading of
    largest magnitude is positive. Deterministic for a given input, device
    and :obj:`seed`. Columns beyond :math:`\min(N, F)` (an input narrower
    or shorter than :obj:`num_components`) and the scores of a
    zero-variance input are zeros.

    Args:
        x (torch.Tensor): Features :math:`(N, F)`.
        num_components (int): Output width :math:`k`.
        oversample (int): Extra columns of the randomized range finder.
            (default: :obj:`10`)
        num_iters (int): Subspace iterations of the randomized range finder.
            (default: :obj:`4`)
        seed (int): Seed of the randomized range finder.
            (default: :obj:`0`)

    Shapes:
        - **input:** :math:`(N, F)`
        - **output:** :math:`(N, k)`, in the dtype of :obj:`x`
    """
    if x.dim() != 2:
        raise ValueError(f"'x' must be 2-D [num_items, dim], got shape "
                         f"{list(x.shape)}")
    num_rows, num_cols = x.shape
    k = min(num_components, num_rows, num_cols)
    out = x.new_zeros(num_rows, num_components)
    if k == 0:
        return out
    x = x.detach()
    mean = x.double().mean(dim=0, keepdim=True)
    if num_cols <= EXACT_PCA_MAX_DIM:
        basis = _covariance_basis(x, mean, k)
    else:
        basis = _randomized_basis(x, mean.to(x.dtype), k, oversample,
                                  num_iters, seed)
    # Fixed signs: same result whatever the decomposition returns.
    pivot = basis.abs().argmax(dim=0)
    sign = basis.gather(0, pivot.view(1, -1)).sign()
    basis = basis * torch.where(sign == 0, torch.ones_like(sign), sign)
    for chunk, rows in zip(x.split(_COV_CHUNK_ROWS),
                           out.split(_COV_CHUNK_ROWS)):
        rows[:, :k] = ((chunk.double() - mean) @ basis).to(out.dtype)
    return out


def _covariance_basis(x: Tensor, mean: Tensor, k: int) -> Tensor:
    cov = mean.new_zeros(x.size(1), x.size(1))
    for chunk in x.split(_COV_CHUNK_ROWS):
        centred = chunk.double() - mean
        cov += centred.t() @ centred
    # eigh sorts eigenvalues ascending: the top-k axes are the last columns.
    return torch.linalg.eigh(cov).eigenvectors.flip(-1)[:, :k]


def _randomized_basis(x: Tensor, mean: Tensor, k: int, oversample: int,
                      num_iters: int, seed: int) -> Tensor:
    # Right singular vectors of the centred x without materializing it:
    # (x - 1 mean) @ r == x @ r - mean @ r.
    def times(r: Tensor) -> Tensor:
        return x @ r - mean @ r

    def times_t(q: Tensor) -> Tensor:
        return x.t() @ q - mean.t() @ q.sum(dim=0, keepdim=True)

    q_cols = min(k + oversample, *x.shape)
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(x.size(1), q_cols, generator=gen).to(x.device, x.dtype)
    q = torch.linalg.qr(times(r)).Q
    for _ in range(num_iters):
        q = torch.linalg.qr(times_t(q)).Q
        q = torch.linalg.qr(times(q)).Q
    small = times_t(q).t().double()  # [q_cols, F] = Q^T (x - 1 mean)
    return torch.linalg.svd(small, full_matrices=False).Vh[:k].t().double()


class PromptLearner(Module):
    r"""The soft prompt of `"PromptMM: Multi-Modal Knowledge Distillation for
    Recommendation with Prompt-Tuning" <https://arxiv.org/abs/2402.17188>`_.

    Hard tokens are built once from the item content: the mean over
    modalities of a PCA of each modality to :math:`d` dimensions (width
    below :math:`d` is zero-padded), and for users the aggregation of their
    items' tokens over the normalized interaction graph. A small trainable
    map turns them into the soft prompts:

    .. math::
        \mathbf{H}_i = \frac{1}{|\mathcal{M}|} \sum_{m \in \mathcal{M}}
        \mathrm{PCA}_d(\mathbf{X}_m), \qquad
        \mathbf{H}_u = \hat{\mathbf{A}} \mathbf{H}_i, \qquad
        \mathbf{P}_i = f_i(\mathbf{H}_i), \qquad
        \mathbf{P}_u = f_u(\mathbf{H}_u)

    with :math:`f` a :class:`~torch.nn.Linear` map (and dropout).
    The hard tokens are persistent buffers, so a saved model reloads with
    the exact tokens it was trained with. Call :meth:`init_tokens` once
    before the first forward pass.

    Args:
        num_users (int): Number of users :math:`U`.
        num_items (int): Number of items :math:`I`.
        embedding_dim (int): Prompt width :math:`d` (the teacher's width).
            (default: :obj:`64`)
        dropout (float): Dropout on the prompts. (default: :obj:`0.`)

    Shapes:
        - **output:** user prompts :math:`(U, d)`, item prompts
          :math:`(I, d)`
    """
    def __init__(self, num_users: int, num_items: int,
                 embedding_dim: int = 64, dropout: float = 0.):
        super().__init__()
        for name, value in (('num_users', num_users),
                            ('num_items', num_items),
                            ('embedding_dim', embedding_dim)):
            check_positive('PromptLearner', name, value)
        if not 0. <= dropout < 1.:
            raise ValueError(f"'dropout' must be in [0, 1), got {dropout}")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.embedding_dim = int(embedding_dim)
        self.user_map = Linear(embedding_dim, embedding_dim)
        self.item_map = Linear(embedding_dim, embedding_dim)
        self.dropout = Dropout(dropout)
        self.conv = BipartiteConv()
        self.register_buffer('user_tokens',
                             torch.zeros(num_users, embedding_dim))
        self.register_buffer('item_tokens',
                             torch.zeros(num_items, embedding_dim))
        self.register_buffer('initialized', torch.tensor(False))
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets the trainable map (the hard tokens are data, kept)."""
        self.user_map.reset_parameters()
        self.item_map.reset_parameters()

    @torch.no_grad()
    def init_tokens(self, graph, features: Mapping[str, Tensor],
                    layout: str = 'edge_index_fused'):
        r"""Computes the hard tokens :math:`\mathbf{H}_i, \mathbf{H}_u` from
        the train graph (a :class:`~torch_geometric.data.HeteroData` or a
        :class:`pmm_geo.data.BipartiteAdjacency`) and the item features
        :obj:`{modality: [I, d_m]}`. Deterministic: calling it again on the
        same data gives the same tokens."""
        adj = as_adjacency(graph, self.num_users, self.num_items,
                           owner='prompt')
        if len(features) == 0:
            raise ValueError("'features' is empty: the hard tokens need at "
                             "least one item modality")
        item_tokens = self.item_tokens.new_zeros(self.item_tokens.shape)
        for name, x in features.items():
            if x.dim() != 2 or x.size(0) != self.num_items:
                raise ValueError(f"Features of modality '{name}' must have "
                                 f"shape [{self.num_items}, d_m], got "
                                 f"{list(x.shape)}")
            item_tokens += pca(x.to(item_tokens.device),
                               self.embedding_dim).to(item_tokens.dtype)
        item_tokens /= len(features)
        adj = adj.to(item_tokens.device)
        user_tokens = self.conv(item_tokens, *adj.item_to_user(layout))
        self.item_tokens.copy_(item_tokens)
        self.user_tokens.copy_(user_tokens)
        self.initialized.fill_(True)
        return self

    def forward(self, user_index: Optional[Tensor] = None,
                item_index: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""Returns the soft prompts :obj:`(P_u, P_i)`, of every user and
        item or of those in :obj:`user_index` / :obj:`item_index` (the map
        is row-wise, so a subset costs only its rows)."""
        if not bool(self.initialized):
            raise RuntimeError(f"{self.__class__.__name__} has no hard "
                               f"tokens yet: call 'init_tokens(graph, "
                               f"features)' (or the teacher's "
                               f"'init_prompt') first")
        user_tokens, item_tokens = self.user_tokens, self.item_tokens
        if user_index is not None:
            user_tokens = user_tokens[user_index]
        if item_index is not None:
            item_tokens = item_tokens[item_index]
        user_prompt = self.dropout(self.user_map(user_tokens))
        item_prompt = self.dropout(self.item_map(item_tokens))
        return user_prompt, item_prompt

    @property
    def moments_are_exact(self) -> bool:
        r"""Whether :meth:`item_moment` gives :math:`\mathbf{P}_i^{\top}
        \mathbf{X}` exactly (no dropout is active on the prompts)."""
        return not self.training or self.dropout.p == 0.

    @torch.no_grad()
    def token_moment(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The prompt-independent statistics of item features :obj:`x`
        :math:`(I, d_m)` that :meth:`item_moment` needs:
        :math:`\mathbf{H}_i^{\top} \mathbf{X}` :math:`(d, d_m)` and
        :math:`\mathbf{1}^{\top} \mathbf{X}` :math:`(d_m)`. One pass over
        :obj:`x`; compute them once per feature table."""
        return self.item_tokens.t() @ x, x.sum(dim=0)

    def item_moment(self, token_moment: Tuple[Tensor, Tensor]) -> Tensor:
        r"""The moment :math:`\mathbf{P}_i^{\top} \mathbf{X}` of all
        item prompts with features :math:`\mathbf{X}`, from
        :meth:`token_moment`'s statistics without reading :math:`\mathbf{X}`:
        the map :math:`f_i(\mathbf{H}) = \mathbf{H} \mathbf{W}^{\top} +
        \mathbf{b}` is affine, so

        .. math::
            \mathbf{P}_i^{\top} \mathbf{X} = \mathbf{W} (\mathbf{H}_i^{\top}
            \mathbf{X}) + \mathbf{b} (\mathbf{1}^{\top} \mathbf{X}),

        a :math:`(d, d_m)` matrix at cost :math:`O(d^2 d_m)` (exact when
        :attr:`moments_are_exact`)."""
        tokens_x, sum_x = token_moment
        return torch.addr(self.item_map.weight @ tokens_x,
                          self.item_map.bias, sum_x)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, {self.embedding_dim}, '
                f'dropout={self.dropout.p})')
