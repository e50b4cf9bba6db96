from typing import Final, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import Adj, OptPairTensor, OptTensor
from torch_geometric.utils import scatter, spmm

from pmm_geo.nn._sparse import csr_tensor, sparse_mm


class _EdgeIndexSpMM(torch.autograd.Function):
    r"""`out = A^T x` for a column-sorted :class:`EdgeIndex` `A` of shape
    `[num_src, num_dst]`, with the CSC (forward) and CSR (backward) indices
    cached on the :class:`EdgeIndex`. Written out because PyG 2.8's own
    `EdgeIndex.matmul(..., transpose=True)` back-propagates with the wrong
    shape on non-square (bipartite) matrices."""
    @staticmethod
    def forward(ctx, edge_index: EdgeIndex, x: Tensor,
                value: Tensor) -> Tensor:
        num_src, num_dst = edge_index.sparse_size()
        (colptr, row), perm = edge_index.get_csc()
        adj_t = csr_tensor(colptr, row,
                           value if perm is None else value[perm],
                           (num_dst, num_src))
        ctx.edge_index = edge_index
        ctx.save_for_backward(value)
        return sparse_mm(adj_t, x)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        edge_index = ctx.edge_index
        value, = ctx.saved_tensors
        num_src, num_dst = edge_index.sparse_size()
        (rowptr, col), perm = edge_index.get_csr()
        adj = csr_tensor(rowptr, col, value if perm is None else value[perm],
                         (num_src, num_dst))
        return None, sparse_mm(adj, grad_out), None


class BipartiteConv(MessagePassing):
    r"""The light graph convolution of `"LightGCN: Simplifying and Powering
    Graph Convolution Network for Recommendation"
    <https://arxiv.org/abs/2002.02126>`_ on a bipartite (user-item) graph,
    with a pre-normalized, cached adjacency.

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i)} \hat{a}_{j,i}
        \mathbf{x}_j, \qquad \hat{a}_{u,i} = \frac{1}{\sqrt{\deg(u)
        \deg(i)}}

    Unlike :class:`torch_geometric.nn.conv.LGConv` it takes source and
    destination node sets of different sizes (users aggregate items, items
    aggregate users) and never re-normalizes: pass the weights of a
    :class:`pmm_geo.data.BipartiteAdjacency`, e.g.
    :obj:`conv(x_item, *adj.item_to_user())`.

    Every adjacency format gives the same result: a plain :obj:`edge_index`
    with :obj:`edge_weight` (gather/scatter), a column-sorted
    :class:`torch_geometric.EdgeIndex` (fused matmul), a transposed
    :obj:`torch.sparse` tensor or a :class:`torch_sparse.SparseTensor`.

    Args:
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** source features :math:`(|\mathcal{V}_s|, F)` or a pair
          :math:`((|\mathcal{V}_s|, F), (|\mathcal{V}_t|, F))`, edge indices
          :math:`(2, |\mathcal{E}|)` or a sparse :math:`(|\mathcal{V}_t|,
          |\mathcal{V}_s|)` matrix, edge weights :math:`(|\mathcal{E}|)`
          *(optional)*, :obj:`size` :math:`(|\mathcal{V}_s|,
          |\mathcal{V}_t|)` for plain edge indices
        - **output:** target features :math:`(|\mathcal{V}_t|, F)`
    """
    SUPPORTS_FUSED_EDGE_INDEX: Final[bool] = True

    def __init__(self, **kwargs):
        kwargs.setdefault('aggr', 'add')
        super().__init__(**kwargs)
        if self.aggr not in ('add', 'sum'):
            raise ValueError(f"{self.__class__.__name__} sums normalized "
                             f"messages; got aggr='{self.aggr}'")

    def forward(
        self,
        x: Union[Tensor, OptPairTensor],
        edge_index: Adj,
        edge_weight: OptTensor = None,
        size: Optional[Tuple[int, int]] = None,
    ) -> Tensor:
        if isinstance(x, Tensor):
            x = (x, None)
        # propagate_type: (x: OptPairTensor, edge_weight: OptTensor)
        return self.propagate(edge_index, x=x, edge_weight=edge_weight,
                              size=size)

    def message(self, x_j: Tensor, edge_weight: OptTensor) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, edge_index: Adj, x: OptPairTensor,
                              edge_weight: OptTensor) -> Tensor:
        x_src = x[0]
        if isinstance(edge_index, EdgeIndex):
            if edge_weight is None:
                edge_weight = x_src.new_ones(edge_index.size(1))
            if edge_weight.requires_grad:  # Learned edge weights.
                src, dst = edge_index.as_tensor()
                return scatter(edge_weight.view(-1, 1) * x_src[src], dst, 0,
                               dim_size=edge_index.sparse_size(1),
                               reduce=self.aggr)
            return _EdgeIndexSpMM.apply(edge_index, x_src, edge_weight)
        if (isinstance(edge_index, Tensor)
                and edge_index.layout == torch.sparse_csr
                and not edge_index.requires_grad):
            return sparse_mm(edge_index, x_src)
        return spmm(edge_index, x_src, reduce=self.aggr)
