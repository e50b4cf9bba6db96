from .bipartite_conv import BipartiteConv

__all__ = ['BipartiteConv']
