r"""Cost of a sampled subgraph's rows of an item-item graph,
:meth:`pmm_geo.nn.FrozenItemGraph.rows`, by share of the catalogue.

Times forward + backward + :meth:`coalesce` of the sparse gradient (what
:class:`torch.optim.SparseAdam` does) for a trainable table, three ways, the
ways of one share interleaved, median of :obj:`--repeats`:

- ``gather``: the earlier code, a ``[rows, k, d]`` gather of the neighbours'
  rows, weighted and summed (kept here as the reference);
- ``neighbours``: one sparse product over the rows' distinct neighbours;
- ``all items``: one sparse product over the catalogue.

:meth:`rows` takes ``neighbours`` below ``ROWS_BY_PRODUCT`` of the items and
``all items`` from there. Each way's output and gradient are checked against
the reference. The graph is a mixed kNN graph of random image and text
features (``k`` neighbours per modality).

    python benchmarks/bench_item_graph_rows.py            # Electronics' items
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import pmm_geo.nn.conv.frozen_item_graph as item_graph_module
from pmm_geo.nn import FrozenItemGraph

SHARES = (0.02, 0.05, 0.1, 0.25, 0.5, 0.9)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--items', type=int, default=21479,
                        help='catalogue size (default: Electronics, 21,479)')
    parser.add_argument('--k', type=int, default=10,
                        help='neighbours per item and modality (default: 10)')
    parser.add_argument('--dim', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--shares', type=float, nargs='+', default=SHARES)
    parser.add_argument('--threads', type=int, default=1)
    return parser.parse_args(argv)


def gather_rows(graph, x, index):
    nbr, weight = graph.neighbours(index)
    return (weight.unsqueeze(-1) * F.embedding(nbr, x, sparse=True)).sum(1)


def rows_with(threshold):
    def run(graph, x, index):
        saved = item_graph_module.ROWS_BY_PRODUCT
        item_graph_module.ROWS_BY_PRODUCT = threshold
        try:
            return graph.rows(x, index)
        finally:
            item_graph_module.ROWS_BY_PRODUCT = saved
    return run


WAYS = {'gather': gather_rows, 'neighbours': rows_with(float('inf')),
        'all items': rows_with(0.)}


def time_way(way, graph, table, index, grad_out):
    table.grad = None
    tic = time.process_time()
    out = way(graph, table, index)
    out.backward(grad_out)
    grad = table.grad.coalesce()
    return time.process_time() - tic, out.detach(), grad


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    features = {'image': torch.randn(args.items, 32, generator=gen),
                'text': torch.randn(args.items, 16, generator=gen)}
    graph = FrozenItemGraph.from_features(features, k=args.k)
    table = torch.nn.Parameter(0.1 * torch.randn(args.items, args.dim,
                                                 generator=gen))
    print(f'{args.items:,} items, {graph.edge_index.size(1) // args.items} '
          f'entries per row, width {args.dim}; CPU ms per call (forward, '
          f'backward, coalesce), median of {args.repeats}')
    print(f"{'share':>6}  " + '  '.join(f'{name:>10}' for name in WAYS) +
          '  rows() takes')
    for share in args.shares:
        index = torch.randperm(args.items, generator=gen)[
            :max(1, int(share * args.items))]
        grad_out = torch.randn(index.numel(), args.dim, generator=gen)
        times = {name: [] for name in WAYS}
        results = {}
        for _ in range(args.repeats):
            for name, way in WAYS.items():
                seconds, out, grad = time_way(way, graph, table, index,
                                              grad_out)
                times[name].append(seconds)
                results[name] = (out, grad)
        ref_out, ref_grad = results['gather']
        for name, (out, grad) in results.items():
            if not (torch.allclose(out, ref_out, atol=1e-5) and torch.equal(
                    grad.indices(), ref_grad.indices()) and torch.allclose(
                        grad.values(), ref_grad.values(), atol=1e-5)):
                raise RuntimeError(f"'{name}' differs from the gather at "
                                   f'share {share}')
        taken = 'all items' if graph.rows_by_product(index) else 'neighbours'
        print(f'{share:>6g}  ' + '  '.join(
            f'{1e3 * statistics.median(t):>10.1f}' for t in times.values()) +
            f'  {taken}')


if __name__ == '__main__':
    main()
