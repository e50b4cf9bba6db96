r"""What pmm_geo derives from a dataset once and reuses (the normalized
adjacency, the evaluation's ranking indices), kept beside the data object
rather than inside it."""
import weakref
from typing import Any, Callable, Dict, Hashable, Sequence, Tuple

from torch import Tensor

from .hetero import EDGE_TYPE


class DataCache:
    r"""Objects derived from a pmm_geo
    :class:`~torch_geometric.data.HeteroData`, built on first use and
    dropped with the data.

    An entry is keyed by the data's interaction store and a name, and
    remembers the tensors (or other values) it was built from: when one of
    them is replaced (e.g. :obj:`store.edge_index = ...`), the next
    :meth:`get` builds the entry again. Tensors are compared by identity and
    held by the cache, so a new tensor can never reuse a stale entry's
    memory address.
    """
    def __init__(self):
        self._stores: Dict[int, Tuple[weakref.ref, Dict[Hashable, Any]]] = {}

    def get(self, data, key: Hashable, sources: Sequence[Any],
            build: Callable[[], Any]) -> Any:
        r"""Returns the entry :obj:`key` of :obj:`data`, calling
        :obj:`build()` when there is none or when :obj:`sources` differ from
        those it was built from."""
        entries = self._entries(data[EDGE_TYPE])
        cached = entries.get(key)
        if cached is None or not _same(cached[0], sources):
            cached = entries[key] = (tuple(sources), build())
        return cached[1]

    def clear(self) -> None:
        self._stores.clear()

    def _entries(self, store) -> Dict[Hashable, Any]:
        ident = id(store)
        found = self._stores.get(ident)
        if found is None or found[0]() is not store:
            # The entries live as long as the store: the weak reference's
            # callback drops them when the data is freed.
            stores = self._stores
            ref = weakref.ref(store, lambda _: stores.pop(ident, None))
            found = stores[ident] = (ref, {})
        return found[1]

    def __len__(self) -> int:
        return len(self._stores)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({len(self)} datasets)'


def _same(old: Tuple[Any, ...], new: Sequence[Any]) -> bool:
    return len(old) == len(new) and all(
        a is b or (not isinstance(a, Tensor) and not isinstance(b, Tensor)
                   and a == b) for a, b in zip(old, new))


#: The cache :func:`pmm_geo.data.get_adjacency` and
#: :func:`pmm_geo.evaluate` share.
DATA_CACHE = DataCache()

__all__ = ['DataCache', 'DATA_CACHE']
