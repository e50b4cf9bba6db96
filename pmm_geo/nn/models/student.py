from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Embedding, Module

from pmm_geo.data.adjacency import BipartiteAdjacency, as_adjacency
from pmm_geo.nn.conv import BipartiteConv, FrozenItemGraph
from pmm_geo.nn.functional import lightgcn_propagate, pair_scores
from pmm_geo.nn._checks import check_recommender
from pmm_geo.nn.models._args import init_args
from pmm_geo.ranking import recommend_items

NodeId = Union[Tensor, Tuple[Tensor, Tensor]]


class LightGCNStudent(Module):
    r"""The LightGCN student of `"PromptMM: Multi-Modal Knowledge
    Distillation for Recommendation with Prompt-Tuning"
    <https://arxiv.org/abs/2402.17188>`_ (WWW 2024), i.e. the
    `"LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation" <https://arxiv.org/abs/2002.02126>`_ model on the
    bipartite user-item graph.

    The student owns nothing but its user and item id embeddings (no item
    features, no projector, no teacher), so it is all that is needed at
    serving time. Users aggregate items and items aggregate users, both from
    the previous layer, through the cached symmetric-normalized adjacency
    :math:`\hat{\mathbf{A}} = \mathbf{D}_u^{-1/2} \mathbf{R}
    \mathbf{D}_i^{-1/2}` of :class:`pmm_geo.data.BipartiteAdjacency`:

    .. math::
        \mathbf{E}_u^{(l+1)} = \hat{\mathbf{A}} \mathbf{E}_i^{(l)}, \qquad
        \mathbf{E}_i^{(l+1)} = \hat{\mathbf{A}}^{\top} \mathbf{E}_u^{(l)},
        \qquad \mathbf{e} = \sum_{l=0}^{L} \alpha_l \mathbf{e}^{(l)}

    and a user-item pair is scored by the dot product
    :math:`\hat{y}_{u,i} = \mathbf{e}_u^{\top} \mathbf{e}_i`.

    With an :obj:`item_graph` (a frozen item-item content graph
    :math:`\mathbf{S}`, :class:`~pmm_geo.nn.FrozenItemGraph`, as FREEDOM
    builds it once from the raw item features), the items also aggregate
    their content neighbours' id embeddings, as in FREEDOM:

    .. math::
        \mathbf{e}_i \leftarrow \mathbf{e}_i + (\mathbf{S}
        \mathbf{E}_I^{(0)})_i .

    The graph is structure, not features: the student still owns only id
    embeddings and serves from them (the graph is saved with its weights).

    The API mirrors :class:`torch_geometric.nn.models.LightGCN`
    (:meth:`get_embedding`, :meth:`forward`, :meth:`recommend`,
    :meth:`recommendation_loss`), except that it takes the graph (a pmm_geo
    :class:`~torch_geometric.data.HeteroData` or a
    :class:`~pmm_geo.data.BipartiteAdjacency`) instead of a homogeneous
    :obj:`edge_index`, and node ids are per type (users :obj:`0..U-1`,
    items :obj:`0..I-1`).

    Embeddings are initialized from :math:`\mathcal{N}(0, 0.1^2)` as in the
    reference LightGCN implementation (PyG's :class:`LightGCN` uses Xavier,
    which users reported to train worse, pyg-team/pytorch_geometric#4182).

    .. code-block:: python

        data = pmm_geo.data.synthetic(...)  # or read_promptmm(root)
        student = LightGCNStudent(data['user'].num_nodes,
                                  data['item'].num_nodes, 64)
        pos, neg = student(data, torch.cat([pos_pairs, neg_pairs], 1)).chunk(2)
        loss = student.recommendation_loss(pos, neg, node_id=(users, items))
        top = student.recommend(data, k=20)  # unseen items per user

    Args:
        num_users (int): Number of users.
        num_items (int): Number of items.
        embedding_dim (int, optional): Width :math:`d_s` of the embeddings,
            independent of the teacher's width. (default: :obj:`64`)
        num_layers (int, optional): Number of propagation layers :math:`L`.
            (default: :obj:`3`)
        alpha (float or torch.Tensor, optional): Layer weights
            :math:`\alpha_l`: a scalar for all layers or a tensor of size
            :obj:`num_layers + 1`. (default: :obj:`1 / (num_layers + 1)`)
        layout (str, optional): Adjacency layout used for propagation
            (:obj:`"edge_index"`, :obj:`"edge_index_fused"`, :obj:`"csr"` or
            :obj:`"sparse_tensor"`); all give the same result, the fused
            ones much faster. (default: :obj:`"edge_index_fused"`)
        item_graph (FrozenItemGraph or (int, int), optional): The frozen
            item-item graph :math:`\mathbf{S}` over the :obj:`num_items`
            items, one layer; or its size :obj:`(num_entries, num_layers)`
            for an empty graph that :meth:`load_state_dict` fills (how
            :func:`pmm_geo.load_model` rebuilds a saved student).
            (default: :obj:`None`, plain LightGCN)
    """
    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 64,
        num_layers: int = 3,
        alpha: Optional[Union[float, Tensor]] = None,
        layout: str = 'edge_index_fused',
        item_graph: Optional[Union[FrozenItemGraph, Tuple[int, int]]] = None,
    ):
        super().__init__()
        check_recommender('LightGCNStudent', num_users, num_items,
                          embedding_dim, num_layers, layout)
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.embedding_dim = int(embedding_dim)
        self.num_layers = int(num_layers)
        self.layout = layout

        if alpha is None:
            alpha = 1. / (self.num_layers + 1)
        if isinstance(alpha, Tensor):
            if alpha.numel() != self.num_layers + 1:
                raise ValueError(f"'alpha' must have num_layers + 1 = "
                                 f"{self.num_layers + 1} entries (got "
                                 f"{alpha.numel()})")
            alpha = alpha.detach().clone().float().view(-1)
        else:
            alpha = torch.full((self.num_layers + 1, ), float(alpha))
        self.register_buffer('alpha', alpha)
        self._alpha_cache: Optional[Tuple[Tensor, int, List[float]]] = None

        self.user_embedding = Embedding(self.num_users, self.embedding_dim)
        self.item_embedding = Embedding(self.num_items, self.embedding_dim)
        # One parameter-free conv serves every layer and both directions.
        self.conv = BipartiteConv()
        self.item_graph = _item_graph(item_graph, self.num_items, layout)
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        torch.nn.init.normal_(self.user_embedding.weight, std=0.1)
        torch.nn.init.normal_(self.item_embedding.weight, std=0.1)
        self.conv.reset_parameters()

    def _adjacency(self, graph) -> BipartiteAdjacency:
        return as_adjacency(graph, self.num_users, self.num_items,
                            self.user_embedding.weight.device, 'student')

    def get_embedding(self, graph) -> Tuple[Tensor, Tensor]:
        r"""Returns the propagated user and item embeddings
        :obj:`(user [U, d_s], item [I, d_s])`; on a sampled subgraph those
        of its nodes, in its local order.

        Args:
            graph (HeteroData, BipartiteAdjacency or SampledAdjacency): The
                train graph, or a sampled part of it.
        """
        adj = self._adjacency(graph)
        user, item = lightgcn_propagate(
            self.conv, adj, adj.select_users(self.user_embedding.weight),
            adj.select_items(self.item_embedding.weight), self.num_layers,
            self.layout, self._layer_weights())
        if self.item_graph is not None:
            item = item + self._item_graph_rows(adj)
        return user, item

    def _item_graph_rows(self, adj) -> Tensor:
        # (S E) over all items on the full graph; on a sampled subgraph its
        # items' rows from their neighbours' rows of E alone (a sparse
        # gradient to the table, as the subgraph's own rows).
        table = self.item_embedding.weight
        if adj is adj.root:
            return self.item_graph(table)
        return self.item_graph.rows(table, adj.item_id)

    def _layer_weights(self) -> List[float]:
        # Python floats give one fused add-with-scale kernel per layer and
        # side. They are read from the buffer again only when it changed
        # (loaded, edited in place, moved), not on every forward pass.
        alpha, cache = self.alpha, self._alpha_cache
        if cache is None or cache[0] is not alpha or \
                cache[1] != alpha._version:
            cache = self._alpha_cache = (alpha, alpha._version, alpha.tolist())
        return cache[2]

    def forward(self, graph, edge_label_index: Optional[Tensor] = None
                ) -> Tensor:
        r"""Returns the dot-product scores of the user-item pairs in
        :obj:`edge_label_index`.

        Args:
            graph (HeteroData or BipartiteAdjacency): The train graph.
            edge_label_index (torch.Tensor, optional): Pairs :obj:`[2, B]`,
                row 0 user ids, row 1 item ids. (default: the train edges)
        """
        if edge_label_index is None:
            edge_label_index = as_adjacency(graph).edge_index
        self._check_pairs(edge_label_index, 'edge_label_index', sync=False)
        user, item = self.get_embedding(graph)
        return pair_scores(user, item, edge_label_index[0],
                           edge_label_index[1])

    @torch.no_grad()
    def recommend(
        self,
        graph,
        k: int = 20,
        user_index: Optional[Tensor] = None,
        exclude_links: Optional[Union[Tensor, bool]] = None,
        batch_size: int = 4096,
    ) -> Tensor:
        r"""Returns the top-:obj:`k` item ids :obj:`[B, k]` per user, best
        first, by full ranking over all items, chunked over users so that at
        most :obj:`batch_size x num_items` scores exist at once.

        An excluded item is never returned; if a user has fewer than
        :obj:`k` items left, the rest of the row is padded with :obj:`-1`
        (as :class:`torch_geometric.nn.pool.MIPSKNNIndex` does).

        Args:
            graph (HeteroData or BipartiteAdjacency): The train graph.
            k (int, optional): Number of items per user, in
                :obj:`1..num_items`. (default: :obj:`20`)
            user_index (torch.Tensor, optional): User ids to recommend for.
                (default: all users)
            exclude_links (torch.Tensor or bool, optional): Pairs
                :obj:`[2, E]` (user id, item id) never to recommend. By
                default (:obj:`None`) the graph's train edges, i.e. items
                the user has already seen; :obj:`False` excludes nothing.
                To also hide validation items, pass
                :obj:`torch.cat([train_edges, val_edges], 1)`.
            batch_size (int, optional): Users scored at once.
                (default: :obj:`4096`)
        """
        if not 1 <= int(k) <= self.num_items:
            raise ValueError(f"'k' must be in 1..num_items={self.num_items} "
                             f"(got {k})")
        if int(batch_size) < 1:
            raise ValueError(f"'batch_size' must be positive "
                             f"(got {batch_size})")
        user_emb, item_emb = self.get_embedding(graph)
        device = user_emb.device
        if user_index is not None:
            user_index = user_index.view(-1).long().to(device)
            self._check_ids(user_index, self.num_users, 'user_index')
        if exclude_links is None or exclude_links is True:
            exclude_links = as_adjacency(graph).edge_index
        if exclude_links is False:
            exclude_links = None
        else:
            self._check_pairs(exclude_links, 'exclude_links')
        return recommend_items(user_emb, item_emb, int(k), user_index,
                               exclude_links, int(batch_size))

    def recommendation_loss(
        self,
        pos_edge_rank: Tensor,
        neg_edge_rank: Tensor,
        node_id: Optional[NodeId] = None,
        lambda_reg: float = 1e-4,
    ) -> Tensor:
        r"""The Bayesian Personalized Ranking loss of
        :class:`pmm_geo.nn.BPRLoss`, with L2 regularization of the layer-0
        embeddings of the nodes in the batch (as
        :meth:`torch_geometric.nn.models.LightGCN.recommendation_loss`).

        Args:
            pos_edge_rank (torch.Tensor): Scores of positive pairs
                :obj:`[B]`.
            neg_edge_rank (torch.Tensor): Scores of negative pairs
                :obj:`[B]`.
            node_id (torch.Tensor or (torch.Tensor, torch.Tensor), optional):
                Nodes whose embeddings are regularized: a tuple
                :obj:`(user_ids, item_ids)`, or one tensor of homogeneous ids
                as in PyG (users :obj:`0..U-1`, items :obj:`U..U+I-1`).
                (default: :obj:`None`, no regularization)
            lambda_reg (float, optional): Weight of the L2 term.
                (default: :obj:`1e-4`)
        """
        from pmm_geo.nn.losses.bpr import BPRLoss

        params = None
        if node_id is not None:
            user_id, item_id = self._split_node_id(node_id)
            params = [self.user_embedding.weight[user_id],
                      self.item_embedding.weight[item_id]]
        return BPRLoss(lambda_reg=lambda_reg)(pos_edge_rank, neg_edge_rank,
                                              params)

    def _split_node_id(self, node_id: NodeId) -> Tuple[Tensor, Tensor]:
        if isinstance(node_id, (tuple, list)):
            user_id, item_id = node_id
            self._check_ids(user_id, self.num_users, 'node_id[0]')
            self._check_ids(item_id, self.num_items, 'node_id[1]')
            return user_id.long(), item_id.long()
        node_id = node_id.view(-1).long()
        self._check_ids(node_id, self.num_users + self.num_items, 'node_id')
        is_user = node_id < self.num_users
        return node_id[is_user], node_id[~is_user] - self.num_users

    def _check_pairs(self, pairs: Tensor, name: str, sync: bool = True):
        if not isinstance(pairs, Tensor) or pairs.dim() != 2 \
                or pairs.size(0) != 2:
            shape = list(pairs.shape) if isinstance(pairs, Tensor) else \
                type(pairs).__name__
            raise ValueError(f"'{name}' must be a [2, E] tensor of (user, "
                             f"item) ids (got {shape})")
        self._check_ids(pairs[0], self.num_users, f'{name}[0] (user)', sync)
        self._check_ids(pairs[1], self.num_items, f'{name}[1] (item)', sync)

    @staticmethod
    def _check_ids(ids: Tensor, num: int, name: str, sync: bool = True):
        if ids.numel() == 0:
            return
        if ids.is_floating_point():
            raise ValueError(f"'{name}' must hold integer ids (got "
                             f"{ids.dtype})")
        if not sync and ids.device.type != 'cpu':
            # The range check would stall the forward pass on a host-device
            # sync; an out-of-range id fails the gather's own device assert.
            return
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num:
            bad = low if low < 0 else high
            raise ValueError(f"'{name}' holds id {bad}, out of range "
                             f"0..{num - 1}")

    def init_args(self) -> Dict[str, Any]:
        r"""The constructor arguments of this student (what
        :func:`pmm_geo.load_model` rebuilds it from)."""
        graph = self.item_graph
        return init_args(
            self, alpha=self.alpha.detach().cpu().clone(),
            item_graph=None if graph is None else
            (graph.edge_index.size(1), graph.num_layers))

    def __repr__(self) -> str:
        graph = '' if self.item_graph is None else \
            f', item_graph={self.item_graph}'
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, {self.embedding_dim}, '
                f'num_layers={self.num_layers}{graph})')


def _item_graph(item_graph, num_items: int, layout: str
                ) -> Optional[FrozenItemGraph]:
    # The student's item graph: given, an empty one of the saved size, or
    # none.
    if item_graph is None or isinstance(item_graph, FrozenItemGraph):
        graph = item_graph
    elif (isinstance(item_graph, (tuple, list)) and len(item_graph) == 2
          and all(isinstance(v, int) for v in item_graph)):
        graph = FrozenItemGraph.empty(item_graph[0], num_items,
                                      item_graph[1], layout)
    else:
        raise ValueError(f"'item_graph' must be a FrozenItemGraph, its size "
                         f"(num_entries, num_layers) or None (got "
                         f"{type(item_graph).__name__})")
    if graph is not None and graph.num_items != num_items:
        raise ValueError(f"'item_graph' is over {graph.num_items} items, the "
                         f"student has {num_items}")
    return graph
