r"""One rank of tests/test_distributed.py, run by torchrun with 2 gloo
processes: one DDP step against one process on the union of the shards,
then a training run uninterrupted, interrupted in stage 2 and resumed; saves
what the test compares in ROOT/rank<r>.pt."""
import os
import sys

import torch
import torch_geometric.typing

from pmm_geo.data import synthetic
from pmm_geo.train import Trainer, TrainConfig, TrainingInterrupted, \
    train_step
from pmm_geo.train import distributed as distributed_module
from pmm_geo.train.distributed import Distributed

SAMPLING = (torch_geometric.typing.WITH_PYG_LIB
            or torch_geometric.typing.WITH_TORCH_SPARSE)
CONFIG = dict(epochs=3, batch_size=64, embedding_dim=8, student_dim=8,
              num_layers=1, student_layers=1, num_list_negatives=3,
              patience=5, ks=(10, 20),
              batching='sampled' if SAMPLING else 'full')


#: Whether each bucket the DDP hook of a sampled stage reduced was sparse.
SPARSE_BUCKETS = []
_hook = distributed_module.sparse_safe_allreduce_hook


def counting_hook(state, bucket) -> torch.futures.Future[torch.Tensor]:
    SPARSE_BUCKETS.append(bucket.buffer().is_sparse)
    return _hook(state, bucket)


distributed_module.sparse_safe_allreduce_hook = counting_hook


class _Bucket:  # What the hook reads of a torch.distributed.GradBucket.
    def __init__(self, tensor):
        self.tensor = tensor

    def buffer(self):
        return self.tensor


def hook_on_uneven_rows(group: Distributed) -> bool:
    r"""Whether the hook averages two ranks' sparse gradients of different
    sizes (3 and 2 entries, one row shared, one row given twice) and dense
    buckets to the dense mean, over the union of the rows: in a table of 5
    rows (the dense all-reduce path: 5 entries >= half the rows) and of 20
    (the all-gather path)."""
    fraction = distributed_module.DENSE_REDUCE_FRACTION
    assert 5 >= fraction * 5 and 5 < fraction * 20  # Both paths run.
    rows = [torch.tensor([[4, 0, 4]]), torch.tensor([[0, 2]])]
    values = [torch.arange(12.).view(3, 4), -torch.ones(2, 4)]
    ok = True
    for num_rows in (5, 20):
        grads = [torch.sparse_coo_tensor(i, v, (num_rows, 4)) for i, v in
                 zip(rows, values)]
        mean = (grads[0].to_dense() + grads[1].to_dense()) / 2
        out = _hook(None, _Bucket(grads[group.rank])).wait()
        dense = _hook(None, _Bucket(grads[group.rank].to_dense())).wait()
        ok = ok and (out.is_sparse and out.is_coalesced()
                     and out.indices().tolist() == [[0, 2, 4]]
                     and torch.equal(out.to_dense(), mean)
                     and torch.equal(dense, mean))
    return ok


def tiny_data():
    return synthetic(num_users=60, num_items=40, num_interactions=900,
                     modalities={'image': 6, 'text': 4}, seed=0)


def one_step(data, batching: str, group: Distributed) -> dict:
    r"""LightGCN's weights after one step: this rank's (2 processes, each
    half of 32 triplets) and, on rank 0, one process's on all 32."""
    config = TrainConfig(model='lightgcn', embedding_dim=8, num_layers=2,
                         batching=batching, fanouts=(-1, -1))
    out = {}
    for name, g in (('ddp', group), ('one', Distributed())):
        if name == 'one' and not group.is_main:
            break
        trainer = Trainer(data, config, quiet=True, distributed=g)
        stage = next(trainer.stages())
        out['init'] = {k: v.clone() for k, v in
                       stage.model.state_dict().items()}
        triplets = next(trainer.sampler.epoch_batches(
            32, torch.Generator().manual_seed(1)))
        if g.enabled:  # This rank's half.
            triplets = [t[g.rank::g.world_size] for t in triplets]
        train_step(stage, stage.optimizer(), *triplets, 0,
                   g.wrap_stage(stage))
        out[name] = {k: v.clone() for k, v in stage.model.state_dict().items()}
    return out


def main(root: str) -> None:
    torch.set_num_threads(1)
    group = Distributed.from_env()
    data = tiny_data()
    hook_ok = hook_on_uneven_rows(group)
    steps = {b: one_step(data, b, group)
             for b in (('full', 'sampled') if SAMPLING else ('full', ))}
    config = TrainConfig(**CONFIG)

    def run(name, **kwargs):
        return Trainer(data, config, run_dir=os.path.join(root, name),
                       quiet=True, plot=False, distributed=group, **kwargs)

    full = run('full')
    results = full.fit()

    def interrupt(stage, record):  # On every rank, as a kill would.
        if stage == 'student':
            raise TrainingInterrupted('stop')

    try:
        run('cut', on_epoch_end=interrupt).fit()
    except TrainingInterrupted:
        pass
    resumed = run('cut')
    torch.save({'steps': steps, 'full': results,
                'resumed': resumed.fit(resume=True),
                'writes': full.writes,
                'weights': {name: m.state_dict() for name, m in
                            resumed.modules.items() if name != 'objective'},
                'full_weights': full.modules['student'].state_dict(),
                'hook_ok': hook_ok,
                'sparse_buckets': sum(SPARSE_BUCKETS),
                'dense_buckets': len(SPARSE_BUCKETS) - sum(SPARSE_BUCKETS)},
               os.path.join(root, f'rank{group.rank}.pt'))
    group.close()


if __name__ == '__main__':
    main(sys.argv[1])
