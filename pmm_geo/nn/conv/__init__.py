from .bipartite_conv import BipartiteConv
from .frozen_item_graph import (
    FrozenItemGraph,
    NeighbourBlock,
    mix_item_graphs,
    modality_mix_weights,
)

__all__ = [
    'BipartiteConv',
    'FrozenItemGraph',
    'NeighbourBlock',
    'mix_item_graphs',
    'modality_mix_weights',
]
