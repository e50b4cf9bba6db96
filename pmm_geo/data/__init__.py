r"""Data layer: interactions and item modality features as a PyG
:class:`~torch_geometric.data.HeteroData`, readers, samplers, adjacency."""
from .adjacency import (
    AdjacencyView,
    BipartiteAdjacency,
    as_adjacency,
    get_adjacency,
)
from .sampler import NegativeSampler
from .subgraph import SampledAdjacency
from .subgraph_loader import SampledBatch, SubgraphLoader
from .hetero import (
    EDGE_TYPE,
    REV_EDGE_TYPE,
    DataFormatError,
    from_arrays,
    modalities,
    split_edge_index,
)
from .readers import (
    detect_format,
    read_dataset,
    read_mmrec,
    read_promptmm,
    write_mmrec,
    write_promptmm,
)
from .prepare import (
    chronological_split,
    k_core,
    prepare,
    read_id_map,
    read_interactions,
)
from .synthetic import (ELECTRONICS, SyntheticFactors, synthetic,
                        synthetic_electronics)

__all__ = [
    'read_promptmm',
    'read_mmrec',
    'read_dataset',
    'detect_format',
    'prepare',
    'read_interactions',
    'k_core',
    'chronological_split',
    'read_id_map',
    'write_promptmm',
    'write_mmrec',
    'synthetic',
    'synthetic_electronics',
    'ELECTRONICS',
    'SyntheticFactors',
    'EDGE_TYPE',
    'REV_EDGE_TYPE',
    'DataFormatError',
    'from_arrays',
    'modalities',
    'split_edge_index',
    'AdjacencyView',
    'BipartiteAdjacency',
    'get_adjacency',
    'as_adjacency',
    'NegativeSampler',
    'SampledAdjacency',
    'SubgraphLoader',
    'SampledBatch',
]
