from typing import Tuple

import torch
from torch import Tensor
from torch_geometric.utils import scatter

DEFAULT_BLOCK_SIZE = 2048


def _inverse_norm(x: Tensor) -> Tensor:
    # Zero rows (an item without this modality) get an inverse norm of 0, so
    # their cosines are 0 instead of the NaN of x / ||x||.
    norm = x.norm(p=2, dim=1)
    return torch.where(norm > 0, 1.0 / norm.clamp_min(1e-30),
                       torch.zeros_like(norm))


@torch.no_grad()
def cosine_knn(
    x: Tensor,
    k: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Tuple[Tensor, Tensor]:
    r"""Exact top-:math:`k` cosine neighbours of every row of :obj:`x`,
    computed in blocks of query rows so that no :math:`N \times N` matrix is
    ever formed.

    .. math::
        \mathrm{knn}(i) = \operatorname{top-k}_j \;
        \frac{\mathbf{x}_i^{\top} \mathbf{x}_j}
        {\|\mathbf{x}_i\| \, \|\mathbf{x}_j\|}

    Memory is :math:`O(B \cdot N + N \cdot k)` for block size :math:`B`;
    compute is :math:`2 N^2 d`. As in LATTICE, a row is its own neighbour
    (its cosine with itself is the maximum, 1), so each row keeps itself
    plus :math:`k - 1` others (ties, e.g. duplicated features, are broken by
    :func:`torch.topk`). A zero row has cosine 0 with every row, itself
    included: its :math:`k` neighbours are then arbitrary, with similarity
    0, and other rows only pick it when fewer than :math:`k` rows have a
    positive cosine with them.

    Runs under :func:`torch.no_grad`: to back-propagate through the
    selected similarities (the same gradient as a dense :func:`torch.topk`),
    recompute them with :func:`edge_cosine`.

    Args:
        x (torch.Tensor): Row vectors :math:`(N, d)`.
        k (int): Number of neighbours per row, :math:`1 \le k \le N`.
        block_size (int, optional): Query rows per block.
            (default: :obj:`2048`)

    Returns:
        (values, index): the cosines :math:`(N, k)` (descending per row;
        float64 for float64 input, else float32) and the neighbour ids
        :math:`(N, k)`.
    """
    if x.dim() != 2:
        raise ValueError(f"'x' must be 2-D [N, d], got shape {list(x.shape)}")
    num_rows = x.size(0)
    if not 1 <= k <= num_rows:
        raise ValueError(f"'k' must be in [1, {num_rows}] (the number of "
                         f"rows), got {k}")
    if block_size < 1:
        raise ValueError(f"'block_size' must be positive, got {block_size}")

    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # Half-precision dot products would blur the ranking.
    inv_norm = _inverse_norm(x)
    values = x.new_empty(num_rows, k)
    index = torch.empty(num_rows, k, dtype=torch.long, device=x.device)
    for start in range(0, num_rows, block_size):
        end = min(start + block_size, num_rows)
        # Scale the block's dot products in place rather than normalizing a
        # full copy of x (a 4096-d image table is hundreds of MB).
        sim = x[start:end] @ x.t()
        sim.mul_(inv_norm.view(1, -1)).mul_(inv_norm[start:end].view(-1, 1))
        values[start:end], index[start:end] = sim.topk(k, dim=1)
        del sim
    return values, index


def edge_cosine(x: Tensor, index: Tensor) -> Tensor:
    r"""Differentiable cosines between each row :math:`i` of :obj:`x` and its
    neighbours :obj:`index[i]`, in :math:`O(N k d)`.

    With :obj:`index` from :func:`cosine_knn`, this equals the values of a
    dense :obj:`topk(cos(x, x))` and has the same gradient with respect to
    :obj:`x` (the gradient of :func:`torch.topk` only reaches the selected
    entries). Zero rows give cosine 0 and a finite (zero) gradient.

    Args:
        x (torch.Tensor): Row vectors :math:`(N, d)`.
        index (torch.Tensor): Neighbour ids :math:`(N, k)`.

    Returns:
        The cosines :math:`(N, k)`.
    """
    if index.dim() != 2 or index.size(0) != x.size(0):
        raise ValueError(f"'index' must have shape [{x.size(0)}, k], got "
                         f"{list(index.shape)}")
    norm = x.norm(p=2, dim=1, keepdim=True)
    # Where the norm is 0 the row is 0 too: dividing by 1 keeps it 0 and
    # avoids the 0/0 of the forward and backward pass.
    z = x / torch.where(norm > 0, norm, torch.ones_like(norm))
    return (z.unsqueeze(1) * z[index]).sum(dim=-1)


def symmetric_normalize(row: Tensor, col: Tensor, value: Tensor,
                        num_nodes: int) -> Tensor:
    r"""The values of :math:`\mathbf{D}^{-1/2} \mathbf{A} \mathbf{D}^{-1/2}`
    for the sparse :math:`\mathbf{A}` given as :obj:`(row, col, value)`,
    with :math:`\mathbf{D}` the **row** sums of :math:`\mathbf{A}` (LATTICE's
    and FREEDOM's :obj:`compute_normalized_laplacian`; a kNN graph is
    directed, so its row and column sums differ).

    A row sum :math:`\le 0` (an item without neighbours, or negative learned
    cosines) is mapped to :math:`D^{-1/2} = 0`. Duplicated edges may be left
    uncoalesced: the map is linear in the values.
    """
    deg = scatter(value, row, 0, dim_size=num_nodes, reduce='sum')
    positive = deg > 0
    deg_inv_sqrt = torch.where(
        positive, torch.where(positive, deg, torch.ones_like(deg)).rsqrt(),
        torch.zeros_like(deg))
    return deg_inv_sqrt[row] * value * deg_inv_sqrt[col]


@torch.no_grad()
def knn_item_graph(
    x: Tensor,
    k: int,
    weighted: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Tuple[Tensor, Tensor]:
    r"""The symmetric-normalized kNN item-item graph of the rows of
    :obj:`x`, built once from raw features, sparse (:math:`N k` edges):

    .. math::
        \mathbf{S} = \mathbf{D}^{-1/2} \mathbf{A} \mathbf{D}^{-1/2}, \qquad
        a_{ij} = \begin{cases} \cos(\mathbf{x}_i, \mathbf{x}_j) \text{ (or 1
        if not weighted)} & j \in \mathrm{knn}(i) \\ 0 & \text{otherwise}
        \end{cases}

    with :math:`\mathrm{knn}(i)` from :func:`cosine_knn` (self included)
    and :math:`\mathbf{D}` the row sums. LATTICE weighs the edges by their
    cosine (:obj:`weighted=True`), FREEDOM keeps them binary
    (:obj:`weighted=False`, so every row sum is :math:`k`). A zero row of
    :obj:`x` (an item without this modality) gets no neighbours: its cosines
    are 0, and in the binary graph its edges are dropped too, instead of
    linking it to :math:`k` arbitrary items.

    Args:
        x (torch.Tensor): Raw features :math:`(N, d)`.
        k (int): Neighbours per row, self included.
        weighted (bool, optional): Cosine (:obj:`True`) or binary edge
            weights. (default: :obj:`True`)
        block_size (int, optional): Query rows per kNN block.
            (default: :obj:`2048`)

    Returns:
        :obj:`(edge_index, edge_weight)`: :obj:`edge_index[0]` the row
        (the item aggregating), :obj:`edge_index[1]` its neighbour, sorted
        by row, :math:`k` entries per row.
    """
    values, col = cosine_knn(x, k, block_size)
    num_rows = x.size(0)
    row = torch.arange(num_rows, device=x.device).repeat_interleave(k)
    col, values = col.view(-1), values.view(-1)
    if not weighted:
        has_row = (x != 0).any(dim=1).repeat_interleave(k)
        values = has_row.to(values.dtype)
    weight = symmetric_normalize(row, col, values, num_rows)
    return torch.stack([row, col]), weight
