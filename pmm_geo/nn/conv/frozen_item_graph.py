from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric import EdgeIndex

from pmm_geo.data.adjacency import LAYOUTS, AdjacencyView, adjacency_view
from pmm_geo.nn.knn import DEFAULT_BLOCK_SIZE, knn_item_graph

from .bipartite_conv import BipartiteConv

ItemGraph = Tuple[Tensor, Tensor]  # (edge_index [2, E], edge_weight [E])


class NeighbourBlock(NamedTuple):
    r"""Rows of a :class:`FrozenItemGraph` over their distinct neighbours
    (:meth:`FrozenItemGraph.neighbour_block`)."""
    ids: Tensor  # The distinct neighbours [N], sorted.
    edge_index: EdgeIndex  # Local neighbour -> row, [N, R], col-sorted.
    edge_weight: Tensor  # s_ij of each entry.


#: FREEDOM's mix of an image and a text graph (MMRec's
#: :obj:`mm_image_weight = 0.1`): the text graph dominates.
IMAGE_TEXT_WEIGHTS = {'image': 0.1, 'text': 0.9}


def modality_mix_weights(modalities: Sequence[str],
                         image_weight: float = 0.1) -> Dict[str, float]:
    r"""The weights :math:`w_m` that mix per-modality item graphs.

    The rule, for any set of modalities: exactly :obj:`image` and
    :obj:`text` get FREEDOM's :math:`(w, 1 - w)` with
    :math:`w` = :obj:`image_weight` (0.1, MMRec's :obj:`mm_image_weight`);
    any other set (one modality, or e.g. Tiktok's image, text and audio)
    gets equal weights :math:`1 / M`. The weights sum to 1.

    Args:
        modalities (Sequence[str]): The modality names.
        image_weight (float, optional): The image weight of an image + text
            pair, in :math:`[0, 1]`. (default: :obj:`0.1`)
    """
    modalities = list(modalities)
    if not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"'modalities' must be distinct names, at least "
                         f"one, got {modalities}")
    if not 0. <= image_weight <= 1.:
        raise ValueError(f"'image_weight' must be in [0, 1], got "
                         f"{image_weight!r}")
    if set(modalities) == set(IMAGE_TEXT_WEIGHTS):
        return {m: image_weight if m == 'image' else 1. - image_weight
                for m in modalities}
    return {m: 1. / len(modalities) for m in modalities}


def mix_item_graphs(graphs: Mapping[str, ItemGraph],
                    weights: Mapping[str, float]) -> ItemGraph:
    r"""Returns :math:`\sum_m w_m \mathbf{S}_m` for sparse graphs
    :math:`\mathbf{S}_m` given as :obj:`(edge_index, edge_weight)`, as the
    concatenation of the weighted edge lists: a pair :math:`(i, j)` in
    several graphs stays several entries, which propagation sums like the
    coalesced sum. The size is the sum of the sizes (:math:`M I k` for
    :math:`M` kNN graphs), so a saved graph reloads into a model built from
    the feature widths alone."""
    if set(graphs) != set(weights):
        raise ValueError(f"'weights' must name exactly the graphs "
                         f"{list(graphs)}, got {list(weights)}")
    edge_index = torch.cat([graphs[m][0] for m in graphs], dim=1)
    edge_weight = torch.cat([weights[m] * graphs[m][1] for m in graphs])
    return edge_index, edge_weight


#: :meth:`FrozenItemGraph.rows` of at least this share of the items go
#: through one sparse product over all items instead of one over the rows'
#: distinct neighbours (the same values; the two cost the same at about
#: half the items, ``docs/benchmarks.md``).
ROWS_BY_PRODUCT = 0.5


class FrozenItemGraph(torch.nn.Module):
    r"""Item-item propagation over a frozen multimodal kNN content graph,
    the item-graph branch of `"A Tale of Two Graphs: Freezing and Denoising
    Graph Structures for Multimodal Recommendation"
    <https://arxiv.org/abs/2211.06924>`_ (FREEDOM, Zhou et al., ACM MM 2023)
    and the frozen half of LATTICE's item graph.

    The graph is built once from the raw item features
    (:meth:`from_features`): per modality :math:`m` a kNN graph on the
    cosine similarity of :math:`\mathbf{X}_m` (self included),
    symmetric-normalized with its row sums, then mixed:

    .. math::
        \mathbf{S} = \sum_m w_m \mathbf{D}_m^{-1/2} \mathbf{A}_m
        \mathbf{D}_m^{-1/2}, \qquad
        \mathbf{x}^{\prime} = \mathbf{S}^{L} \mathbf{x},
        \quad \text{i.e.} \quad
        \mathbf{x}^{\prime (l+1)}_i = \sum_{j \in \mathrm{knn}(i)} s_{ij}
        \mathbf{x}^{\prime (l)}_j

    with binary :math:`\mathbf{A}_m` (FREEDOM) or cosine-weighted ones
    (LATTICE), and the weights :math:`w_m` of :func:`modality_mix_weights`
    by default. Each layer is a :class:`~pmm_geo.nn.BipartiteConv`
    message-passing step on the :math:`I \times I` graph, so every
    adjacency layout of the user-item graph applies; the graph holds at
    :math:`M I k` entries and is never dense. It has no parameters: the
    graph is a (saved) buffer, and gradients flow to :math:`\mathbf{x}`
    only.

    Args:
        edge_index (torch.Tensor): The graph :obj:`[2, E]`,
            :obj:`edge_index[0]` the item aggregating, :obj:`edge_index[1]`
            its neighbour (the matrix row and column of :math:`\mathbf{S}`).
        edge_weight (torch.Tensor): The normalized weights :math:`s_{ij}`
            :obj:`[E]`.
        num_items (int): Number of items :math:`I`.
        num_layers (int, optional): Propagation steps :math:`L \ge 1`.
            (default: :obj:`1`)
        layout (str, optional): Adjacency layout of the propagation (see
            :class:`~pmm_geo.data.BipartiteAdjacency`).
            (default: :obj:`"edge_index_fused"`)

    Shapes:
        - **input:** item features :math:`(I, F)`
        - **output:** item features :math:`(I, F)`
    """
    def __init__(self, edge_index: Tensor, edge_weight: Tensor,
                 num_items: int, num_layers: int = 1,
                 layout: str = 'edge_index_fused'):
        super().__init__()
        if not isinstance(num_items, int) or num_items < 1:
            raise ValueError(f"'num_items' must be a positive integer, got "
                             f"{num_items!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"'num_layers' must be an integer >= 1, got "
                             f"{num_layers!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"Unknown 'layout' {layout!r} (expected one of "
                             f"{LAYOUTS})")
        if (edge_index.dim() != 2 or edge_index.size(0) != 2
                or edge_weight.shape != (edge_index.size(1), )):
            raise ValueError(f"Expected 'edge_index' [2, E] and "
                             f"'edge_weight' [E], got "
                             f"{list(edge_index.shape)} and "
                             f"{list(edge_weight.shape)}")
        if edge_index.numel() and (edge_index.min() < 0
                                   or edge_index.max() >= num_items):
            raise ValueError(f"'edge_index' holds ids outside "
                             f"[0, {num_items - 1}]")
        self.num_items = num_items
        self.num_layers = num_layers
        self.layout = layout
        self.register_buffer('edge_index', edge_index.long())
        self.register_buffer('edge_weight', edge_weight)
        self.conv = BipartiteConv()
        self._view: Optional[Tuple[tuple, AdjacencyView]] = None
        self._blocks: Optional[Tuple[tuple, Tuple[Tensor, Tensor]]] = None

    @classmethod
    def from_features(cls, features: Mapping[str, Tensor], k: int = 10,
                      modality_weights: Optional[Mapping[str, float]] = None,
                      weighted: bool = False, num_layers: int = 1,
                      block_size: int = DEFAULT_BLOCK_SIZE,
                      layout: str = 'edge_index_fused') -> 'FrozenItemGraph':
        r"""Builds the mixed kNN graph of the raw :obj:`features`
        :obj:`{modality: [I, d_m]}` (blocked top-:math:`k`, memory
        :math:`O(B \cdot I)` per block of :math:`B` rows).

        Args:
            features (Mapping[str, torch.Tensor]): Raw item features.
            k (int, optional): Neighbours per item, self included.
                (default: :obj:`10`)
            modality_weights (Mapping[str, float], optional): :math:`w_m`
                per modality (default: :func:`modality_mix_weights`).
            weighted (bool, optional): Cosine-weighted (LATTICE) instead of
                binary (FREEDOM) edges. (default: :obj:`False`)
            num_layers (int, optional): Propagation steps. (default: :obj:`1`)
            block_size (int, optional): Query rows per kNN block.
                (default: :obj:`2048`)
            layout (str, optional): Adjacency layout.
                (default: :obj:`"edge_index_fused"`)
        """
        graphs, num_items = knn_item_graphs(features, k, weighted, block_size)
        if modality_weights is None:
            modality_weights = modality_mix_weights(list(graphs))
        edge_index, edge_weight = mix_item_graphs(graphs, modality_weights)
        return cls(edge_index, edge_weight, num_items, num_layers, layout)

    @classmethod
    def empty(cls, num_entries: int, num_items: int, num_layers: int = 1,
              layout: str = 'edge_index_fused') -> 'FrozenItemGraph':
        r"""A graph of :obj:`num_entries` zero entries, for
        :meth:`load_state_dict` to fill (a saved model rebuilt without its
        features)."""
        return cls(torch.zeros(2, num_entries, dtype=torch.long),
                   torch.zeros(num_entries), num_items, num_layers, layout)

    def reset_parameters(self):
        r"""Nothing to reset: the graph is frozen."""
        self.conv.reset_parameters()

    def adjacency(self) -> AdjacencyView:
        r"""The cached view of :math:`\mathbf{S}` that
        :class:`~pmm_geo.nn.BipartiteConv` propagates over (rebuilt when the
        buffers move or are reloaded)."""
        # In-place changes (load_state_dict copies) bump _version.
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype)
                    for t in (self.edge_index, self.edge_weight))
        if self._view is None or self._view[0] != key:
            row, col = self.edge_index
            # Messages flow from the neighbour (col) to the item (row).
            view = adjacency_view(col, row, self.edge_weight,
                                  (self.num_items, self.num_items),
                                  self.layout)
            self._view = (key, view)
        return self._view[1]

    def forward(self, x: Tensor) -> Tensor:
        r"""Returns :math:`\mathbf{S}^L \mathbf{x}`.

        Args:
            x (torch.Tensor): Item features :math:`(I, F)`.
        """
        if x.dim() != 2 or x.size(0) != self.num_items:
            raise ValueError(f"Expected item features [{self.num_items}, F], "
                             f"got {list(x.shape)}")
        view = self.adjacency()
        for _ in range(self.num_layers):
            x = self.conv(x, *view)
        return x

    def neighbours(self, index: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The rows :obj:`index` of :math:`\mathbf{S}` as blocks: the
        neighbour ids and weights :math:`(R, k)`, so that row :math:`i` of
        :math:`\mathbf{S} \mathbf{x}` is :obj:`(weight[r, :, None] *
        x[nbr[r]]).sum(0)` from the neighbours' rows of :math:`\mathbf{x}`
        alone (what a sampled subgraph needs: no pass over all items).
        Needs one layer and the same number :math:`k` of entries for every
        item, as :func:`~pmm_geo.nn.knn.knn_item_graph` builds a graph and
        :func:`mix_item_graphs` mixes them (:math:`k = M k_m`).

        Args:
            index (torch.Tensor): Item ids :math:`(R)`.
        """
        key = tuple((t.data_ptr(), t._version)
                    for t in (self.edge_index, self.edge_weight))
        if self._blocks is None or self._blocks[0] != key:
            self._blocks = (key, self._row_blocks())
        nbr, weight = self._blocks[1]
        return nbr[index], weight[index]

    def rows(self, x: Tensor, index: Tensor,
             block: Optional[NeighbourBlock] = None) -> Tensor:
        r"""The rows :obj:`index` of :math:`\mathbf{S} \mathbf{x}` (one
        layer). A trainable table :obj:`x` (a leaf) gets a sparse gradient
        on exactly the neighbours' rows (:meth:`neighbours`), as a sampled
        subgraph's own rows do; a computed :obj:`x` gets its dense one.

        Up to :obj:`ROWS_BY_PRODUCT` of the items, the rows come from the
        neighbours' rows alone (:meth:`neighbour_block`: one sparse product
        over the distinct neighbours, no :math:`(R, k, F)` gather); from
        there, from one sparse product over all items, which then costs
        less. The values are the same either way.

        Args:
            x (torch.Tensor): Item features :math:`(I, F)`.
            index (torch.Tensor): Item ids :math:`(R)`.
            block (NeighbourBlock, optional): :meth:`neighbour_block` of
                :obj:`index` when already built. (default: :obj:`None`)
        """
        sparse = x.requires_grad and x.is_leaf
        if self.rows_by_product(index):
            return self._rows_by_product(x, index, sparse)
        if block is None:
            block = self.neighbour_block(index)
        x_ids = (torch.nn.functional.embedding(block.ids, x, sparse=True)
                 if sparse else x.index_select(0, block.ids))
        return self.block_rows(x_ids, block)

    def rows_by_product(self, index: Tensor) -> bool:
        r"""Whether :meth:`rows` computes the rows :obj:`index` through
        one sparse product over all items (at least
        :obj:`ROWS_BY_PRODUCT` of them) rather than from their neighbours'
        rows."""
        return index.numel() >= ROWS_BY_PRODUCT * self.num_items

    def neighbour_block(self, index: Tensor) -> NeighbourBlock:
        r"""The rows :obj:`index` of :math:`\mathbf{S}` restricted to
        their distinct neighbours :obj:`ids` (sorted): a bipartite graph
        from :obj:`ids` (local numbering) to the rows, for
        :meth:`block_rows`.

        Args:
            index (torch.Tensor): Item ids :math:`(R)`.
        """
        nbr, weight = self.neighbours(index)
        num_rows, k = nbr.shape
        ids = self._distinct(nbr)
        local = torch.empty(self.num_items, dtype=torch.long,
                            device=nbr.device)
        local[ids] = torch.arange(ids.numel(), device=nbr.device)
        rows = torch.arange(num_rows, device=nbr.device)
        edge_index = EdgeIndex(
            torch.stack([local[nbr.reshape(-1)], rows.repeat_interleave(k)]),
            sparse_size=(ids.numel(), num_rows), sort_order='col')
        return NeighbourBlock(ids, edge_index, weight.reshape(-1))

    def block_rows(self, x_ids: Tensor, block: NeighbourBlock) -> Tensor:
        r"""The rows of :math:`\mathbf{S} \mathbf{x}` that :obj:`block`
        (:meth:`neighbour_block`) stands for, from :obj:`x_ids`, the rows
        :obj:`block.ids` of :math:`\mathbf{x}`."""
        return self.conv(x_ids, block.edge_index, block.edge_weight)

    def _rows_by_product(self, x: Tensor, index: Tensor,
                         sparse: bool) -> Tensor:
        # A trainable table enters through its neighbours' rows only (zeros
        # elsewhere, which S[index] never reads), so its gradient stays
        # sparse on exactly those rows.
        if sparse:
            ids = self._distinct(self.neighbours(index)[0])
            rows = torch.nn.functional.embedding(ids, x, sparse=True)
            x = rows.new_zeros(x.shape).index_copy(0, ids, rows)
        return self(x).index_select(0, index)

    def _distinct(self, nbr: Tensor) -> Tensor:
        # The sorted distinct ids in nbr, by a mask over the items (no sort).
        used = torch.zeros(self.num_items, dtype=torch.bool,
                           device=nbr.device)
        used[nbr.reshape(-1)] = True
        return used.nonzero().view(-1)

    def _row_blocks(self) -> Tuple[Tensor, Tensor]:
        num_edges = self.edge_index.size(1)
        k = num_edges // self.num_items
        row = self.edge_index[0]
        counts = torch.bincount(row, minlength=self.num_items)
        if (self.num_layers != 1 or k * self.num_items != num_edges
                or not bool((counts == k).all())):
            raise ValueError(f'{self.__class__.__name__}.neighbours needs '
                             f'one layer (got {self.num_layers}) and the '
                             f'same number of entries for every item (as '
                             f'knn_item_graph builds them; got {num_edges} '
                             f'entries for {self.num_items} items, from '
                             f'{int(counts.min())} to {int(counts.max())} '
                             f'per item)')
        # Stable: a graph stored row by row keeps its order.
        order = row.argsort(stable=True)
        return (self.edge_index[1, order].view(self.num_items, k),
                self.edge_weight[order].view(self.num_items, k))

    def to_dense(self) -> Tensor:
        r"""The dense :math:`I \times I` matrix :math:`\mathbf{S}` (tests
        only)."""
        out = self.edge_weight.new_zeros(self.num_items, self.num_items)
        return out.index_put((self.edge_index[0], self.edge_index[1]),
                             self.edge_weight, accumulate=True)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_items}, '
                f'num_edges={self.edge_index.size(1)}, '
                f'num_layers={self.num_layers})')


def knn_item_graphs(features: Mapping[str, Tensor], k: int,
                    weighted: bool = False,
                    block_size: int = DEFAULT_BLOCK_SIZE
                    ) -> Tuple[Dict[str, ItemGraph], int]:
    r"""The normalized kNN graph of each modality
    (:func:`pmm_geo.nn.knn.knn_item_graph`) and the number of items, with
    the inputs checked."""
    if not isinstance(features, Mapping) or not features:
        raise ValueError("'features' must be a non-empty dict "
                         "{modality: [num_items, dim] tensor}")
    num_items = None
    for m, x in features.items():
        if not isinstance(x, Tensor) or x.dim() != 2 or \
                not x.is_floating_point():
            raise ValueError(f"features['{m}'] must be a 2-D floating point "
                             f"tensor [num_items, dim]")
        if num_items is not None and x.size(0) != num_items:
            raise ValueError(f"features['{m}'] has {x.size(0)} rows, the "
                             f"other modalities {num_items}")
        num_items = x.size(0)
    if not isinstance(k, int) or not 1 <= k <= num_items:
        raise ValueError(f"'k' must be an integer in [1, {num_items}] (the "
                         f"number of items), got {k!r}")
    return {m: knn_item_graph(x, k, weighted, block_size)
            for m, x in features.items()}, num_items
