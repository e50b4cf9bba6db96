r"""The :obj:`pmm-geo` command line (also :obj:`python -m pmm_geo`).

.. code-block:: bash

    pmm-geo prepare INTERACTIONS --out DIR [--user-col user_id]
        [--item-col item_id] [--time-col timestamp] [--sep auto]
        [--min-count K] [--split loo|0.8,0.1,0.1]
    pmm-geo features [ITEMS] --data DIR --modality NAME
        (--text-col COL [--text-col COL ...] | --image-dir DIR)
        [--id-col item_id] [--model NAME_OR_PATH] [--batch-size N]
    pmm-geo train DATA_DIR --out RUN_DIR
        [--model promptmm|lightgcn|lattice|freedom] [--teacher promptmm|lattice]
        [--seed N] [--epochs N] [--ks K ...] [--config FILE] [--resume]
        [--quiet] [--threads N] [--nproc N]
        [--format auto|promptmm|mmrec]
    torchrun --nproc-per-node N -m pmm_geo train DATA_DIR --out RUN_DIR ...
    pmm-geo evaluate RUN_DIR [--json]
    pmm-geo recommend RUN_DIR --users USER [USER ...] [-k 20]
        [--format text|json] [--scores] [--no-exclude-seen]

Bad input gives a one-line error on stderr and exit status 2 for a usage
error, 1 for bad data or any other error. Ctrl-C (SIGINT) and SIGTERM stop
the same way: one line (for :obj:`train`, with the hint to continue with
:obj:`--resume`) and status 130 or 143.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import threading
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

PROG = 'pmm-geo'
#: Exit status of a usage error (argparse's) and of any other error.
USAGE_ERROR, ERROR, INTERRUPTED = 2, 1, 130
#: Exit status after SIGTERM (128 + the signal number, as a shell reports).
TERMINATED = 128 + signal.SIGTERM


class CommandError(Exception):
    r"""An error reported to the user as one line, without a traceback."""


class UsageError(CommandError):
    r"""A wrong combination of options, reported like argparse's errors
    (exit status 2)."""


class Terminated(KeyboardInterrupt):
    r"""Raised by the SIGTERM handler, so that a terminated command leaves
    the way an interrupted one does."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # One line, no usage dump.
        raise CommandError(f'{self.prog}: error: {message} (see {self.prog} '
                           f'--help)')


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer '{text}'")
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer '{text}'")


def build_parser() -> argparse.ArgumentParser:
    from pmm_geo.data.readers import FORMATS
    from pmm_geo.train import MODELS
    from pmm_geo.train.config import TEACHERS
    models = ', '.join(f'{name} ({spec.description})'
                       for name, spec in MODELS.items())

    parser = _Parser(prog=PROG, description='PromptMM multimodal '
                     'recommendation by prompt-tuned distillation, on '
                     'PyTorch Geometric.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND',
                                parser_class=_Parser)
    sub.required = True

    train = sub.add_parser(
        'train', help='train a model on a dataset',
        description='Train on DATA_DIR (LATTICE/PromptMM format: '
        'train.json, val.json, test.json, <modality>_feat.npy) and write '
        'config.json, metrics.json, log.jsonl, checkpoints and curves.png '
        'into RUN_DIR. Model selection uses the validation split only; the '
        'test split is evaluated once, at the selected epoch.')
    train.add_argument('data_dir', metavar='DATA_DIR')
    train.add_argument('--out', required=True, metavar='RUN_DIR',
                       help='run directory (created)')
    train.add_argument('--format', choices=FORMATS, default='auto',
                       help='DATA_DIR format: promptmm (train.json, ...), '
                       'mmrec (<name>.inter with x_label) or auto (default: '
                       'told apart by the files)')
    train.add_argument('--ks', type=_positive_int, nargs='+', default=None,
                       metavar='K', help='metric cut-offs, 20 included '
                       '(default: 10 20 50, dropping those above the number '
                       'of items with a note; given ones must fit)')
    train.add_argument('--model', choices=tuple(MODELS), default=None,
                       help=models)
    train.add_argument('--teacher', choices=TEACHERS, default=None,
                       help='the stage-1 teacher of promptmm: promptmm '
                       '(MultimodalTeacher, default) or lattice (LATTICE '
                       'with the prompt on its projectors)')
    train.add_argument('--seed', type=_int, default=None, metavar='N')
    train.add_argument('--epochs', type=_positive_int, default=None,
                       metavar='N', help='maximum epochs per stage')
    train.add_argument('--config', metavar='FILE', default=None,
                       help='JSON file of TrainConfig keys (the command '
                       'line options override it)')
    train.add_argument('--resume', action='store_true',
                       help='continue the interrupted run in RUN_DIR')
    train.add_argument('--quiet', action='store_true',
                       help='no progress output')
    train.add_argument('--threads', type=_positive_int, default=None,
                       metavar='N', help='torch threads of each process '
                       '(default: OMP_NUM_THREADS, else the cores this '
                       'process may use divided among the processes)')
    train.add_argument('--nproc', type=_positive_int, default=None,
                       metavar='N', help='train with N processes on this '
                       'machine (torch.distributed: each a shard of every '
                       'epoch\'s interactions, gloo on CPU; rank 0 '
                       'evaluates and writes RUN_DIR); the same as torchrun '
                       '--nproc-per-node N -m pmm_geo train ...')

    _add_prepare(sub)
    _add_features(sub)

    evaluate = sub.add_parser('evaluate', help='print the metrics of a run',
                              description='Print the validation and test '
                              'metrics of a finished run.')
    evaluate.add_argument('run_dir', metavar='RUN_DIR')
    evaluate.add_argument('--json', action='store_true',
                          help='print metrics.json as it is')

    recommend = sub.add_parser(
        'recommend', help='top-k unseen items for some users',
        description='Top-k items each user has not interacted with in '
        'training, with their scores, from the saved served model alone '
        '(the student for promptmm): no data directory, features or '
        'teacher are read. When the run was trained on a folder made by '
        'pmm-geo prepare, users and items are original ids.')
    recommend.add_argument('run_dir', metavar='RUN_DIR')
    recommend.add_argument('--users', nargs='+', required=True,
                           metavar='USER', help='original user ids (with '
                           'the id maps), else indices')
    recommend.add_argument('-k', type=_int, default=20,
                           help='items per user (default: 20)')
    recommend.add_argument('--format', choices=('text', 'json'),
                           default='text', help='text: one line per user '
                           '(default); json: a list of {"user", "items", '
                           '"scores"}')
    recommend.add_argument('--scores', action='store_true',
                           help='text: each item followed by its score')
    recommend.add_argument('--exclude-seen', default=True,
                           action=argparse.BooleanOptionalAction,
                           help="leave out the user's train items (default: "
                           "on)")
    return parser


def _add_prepare(sub) -> None:
    prepare = sub.add_parser(
        'prepare', help='raw interactions -> a dataset folder',
        description='Read raw interactions (CSV or TSV with a header, '
        'Parquet with pyarrow, RecBole atomic or sequential .inter files, '
        'or a folder of one dataset\'s .inter files), keep the K-core, '
        'split each user\'s interactions by time and write the PromptMM '
        'folder (train.json, val.json, test.json) with user2id.json and '
        'item2id.json (original id -> index) and prepare.json (what was '
        'done). loo holds out the last interaction for test and the one '
        'before for validation (users with fewer than 3 keep all in '
        'train); ratios split each user\'s time line (RecBole rounding). A '
        'held-out item the user already had is dropped, so no train item '
        'repeats in validation or test.')
    prepare.add_argument('interactions', metavar='INTERACTIONS')
    prepare.add_argument('--out', required=True, metavar='DIR',
                         help='dataset folder to write (created)')
    prepare.add_argument('--user-col', default='user_id', metavar='COL',
                         help='user id column (default: user_id)')
    prepare.add_argument('--item-col', default='item_id', metavar='COL',
                         help='item id column (default: item_id)')
    prepare.add_argument('--time-col', default=None, metavar='COL',
                         help='timestamp column, numbers or ISO 8601 dates '
                         '(default: timestamp when present, else the row '
                         'order)')
    prepare.add_argument('--sep', default='auto', help="field separator: "
                         "auto (default: sniffed from the header), tab, or "
                         "one character")
    prepare.add_argument('--min-count', type=_positive_int, default=1,
                         metavar='K', help='keep users and items with at '
                         'least K distinct partners, repeatedly (default: '
                         '1, keep all)')
    prepare.add_argument('--split', default='loo', help="loo (default) or "
                         "train,val,test ratios such as 0.8,0.1,0.1")


def _add_features(sub) -> None:
    features = sub.add_parser(
        'features', help='item text or images -> <NAME>_feat.npy',
        description='Encode item content into DIR/<NAME>_feat.npy, row i '
        'for the item with index i in DIR/item2id.json: text (the named '
        'columns of the ITEMS table joined) with a sentence-transformers '
        'model, or images <original id>.jpg|.png in --image-dir with an '
        'image network. Items without content get zero rows (counted). An '
        'interrupted run continues where it stopped. Needs '
        "pip install 'pmm_geo[content]'.")
    features.add_argument('items', metavar='ITEMS', nargs='?', default=None,
                          help='item table (CSV, TSV, Parquet); for images '
                          'optional (then every item is looked up)')
    features.add_argument('--data', required=True, metavar='DIR',
                          help='the prepared dataset folder')
    features.add_argument('--modality', required=True, metavar='NAME',
                          help='modality name, e.g. text or image')
    content = features.add_mutually_exclusive_group(required=True)
    content.add_argument('--text-col', action='append', metavar='COL',
                         help='text column (repeat to join several)')
    content.add_argument('--image-dir', metavar='DIR',
                         help='folder of <original id>.jpg|.png images')
    features.add_argument('--id-col', default='item_id', metavar='COL',
                          help='original item id column (default: item_id)')
    features.add_argument('--model', default=None, metavar='NAME_OR_PATH',
                          help='text: a sentence-transformers or Hugging '
                          'Face folder or cached name (default: '
                          'all-MiniLM-L6-v2); images: efficientnet-lite0 '
                          '(default) or a TorchScript file')
    features.add_argument('--batch-size', type=_positive_int, default=64,
                          metavar='N', help='items per batch (default: 64)')
    features.add_argument('--sep', default='auto', help='separator of ITEMS '
                          '(default: sniffed)')
    features.add_argument('--overwrite', action='store_true',
                          help='replace an existing <NAME>_feat.npy')
    features.add_argument('--quiet', action='store_true',
                          help='no progress bar')


# ----------------------------------------------------------------------
# Commands

def _prepare(args) -> int:
    from pmm_geo.data.prepare import prepare
    from pmm_geo.data.tables import parse_sep

    if not os.path.exists(args.interactions):
        raise CommandError(f'INTERACTIONS not found: {args.interactions}')
    time_col = args.time_col or 'timestamp'
    result = prepare(args.interactions, args.out, user_col=args.user_col,
                     item_col=args.item_col, time_col=time_col,
                     sep=parse_sep(args.sep), min_count=args.min_count,
                     split=args.split,
                     time_required=args.time_col is not None)
    r = result.report
    print(f"Read {r['read']['interactions']:,} interactions of "
          f"{r['read']['users']:,} users and {r['read']['items']:,} items "
          f"({r['format']}) from {args.interactions}")
    for note in r['notes']:
        print(f'  note: {note}')
    if r['options']['min_count'] > 1:
        print(f"{r['options']['min_count']}-core: kept "
              f"{r['kept']['interactions']:,} interactions of "
              f"{r['kept']['users']:,} users and {r['kept']['items']:,} "
              f'items')
    sizes = ' / '.join(f"{s} {r['splits'][s]:,}" for s in r['splits'])
    print(f"Split {r['options']['split']}: {sizes}; merged "
          f"{r['merged_repeats']:,} repeated train interactions, dropped "
          f"{r['dropped_heldout_repeats']:,} held-out repeats; "
          f"{r['train_only_users']:,} users too short to hold out (train "
          f'only)')
    print(f'Wrote {args.out}: train.json val.json test.json user2id.json '
          f'item2id.json prepare.json')
    return 0


def _features(args) -> int:
    from pmm_geo.content import ImageEncoder, TextEncoder
    from pmm_geo.content.features import encode_item_features
    from pmm_geo.data.tables import parse_sep

    if args.text_col and args.items is None:
        raise UsageError('--text-col needs ITEMS, the item table')
    for path, what in ((args.items, 'ITEMS'), (args.data, 'DIR (--data)'),
                       (args.image_dir, '--image-dir')):
        if path is not None and not os.path.exists(path):
            raise CommandError(f'{what} not found: {path}')
    encoder = (TextEncoder(args.model) if args.text_col else
               ImageEncoder(args.model))
    report = encode_item_features(
        args.data, args.modality, encoder, items=args.items,
        text_cols=args.text_col, image_dir=args.image_dir,
        id_col=args.id_col, batch_size=args.batch_size,
        sep=parse_sep(args.sep), overwrite=args.overwrite,
        progress=not args.quiet, model_name=encoder.name)
    resumed = (f'; resumed after {report.resumed_from:,} items'
               if report.resumed_from else '')
    print(f'Wrote {report.path}: {report.num_items:,} x {report.dim} '
          f'({encoder.name}); {report.encoded:,} items encoded, '
          f'{report.missing:,} without content as zero rows{resumed}')
    if report.unknown:
        print(f'  note: {report.unknown:,} ids of the input are not items of '
              f'{args.data} (ignored)')
    if report.unreadable:
        print(f'  note: {len(report.unreadable):,} unreadable images as zero '
              f'rows, e.g. {report.unreadable[0]}')
    return 0


def _train(args) -> int:
    from pmm_geo.data.readers import read_dataset
    from pmm_geo.train import RunDir, Trainer, TrainConfig, set_threads
    from pmm_geo.train.distributed import Distributed, launch

    if not os.path.isdir(args.data_dir):
        raise CommandError(f'DATA_DIR not found: {args.data_dir}')
    if args.nproc is not None and 'WORLD_SIZE' in os.environ:
        raise UsageError('--nproc starts torchrun; under torchrun, leave it '
                         'out')
    if (args.nproc or 1) > 1:
        return launch(args.nproc, ['-m', 'pmm_geo', *_without_nproc(
            args.argv)], args.threads)
    overrides = {key: getattr(args, key) for key in ('model', 'teacher',
                                                     'seed', 'epochs', 'ks')
                 if getattr(args, key) is not None}
    if 'ks' in overrides:
        overrides['ks'] = tuple(overrides['ks'])
    data = read_dataset(args.data_dir, args.format)
    if args.resume:
        config = _resume_config(RunDir(args.out), data, args, overrides)
    else:
        config = (TrainConfig.from_json(args.config) if args.config
                  else TrainConfig())
        if overrides:
            config = config.replace(**overrides)
    set_threads(args.threads, int(os.environ.get('LOCAL_WORLD_SIZE', 1)))
    group = Distributed.from_env()
    try:
        trainer = Trainer(data, config, run_dir=args.out, quiet=args.quiet,
                          distributed=group)
        results = trainer.fit(resume=args.resume)
    finally:
        group.close()
    if not group.is_main:
        return 0
    _copy_id_maps(args.data_dir, args.out, data)
    if not args.quiet:
        print(format_metrics(results))
        print(f'Run saved in {args.out}')
    return 0


def _without_nproc(argv: Sequence[str]) -> List[str]:
    r""":obj:`argv` without :obj:`--nproc N` (what each process runs)."""
    out, skip = [], False
    for arg in argv:
        name = arg.split('=', 1)[0]
        nproc = len(name) > 2 and '--nproc'.startswith(name)  # Or a prefix.
        if not (skip or nproc):
            out.append(arg)
        skip = nproc and '=' not in arg
    return out


def _copy_id_maps(data_dir: str, run_dir: str, data) -> None:
    r"""Copies the dataset's :obj:`user2id.json` / :obj:`item2id.json`
    (from :obj:`pmm-geo prepare`) into the run, so that serving speaks
    original ids without the data folder."""
    from pmm_geo.data import DataFormatError
    from pmm_geo.data.prepare import ITEM_MAP, USER_MAP, read_id_map
    for name, node in ((USER_MAP, 'user'), (ITEM_MAP, 'item')):
        mapping = read_id_map(data_dir, name, required=False)
        if mapping is None:
            continue
        if len(mapping) != data[node].num_nodes:
            raise DataFormatError(os.path.join(data_dir, name), name,
                                  f'{len(mapping)} ids, but the data has '
                                  f'{data[node].num_nodes} {node}s')
        os.makedirs(run_dir, exist_ok=True)
        shutil.copyfile(os.path.join(data_dir, name),
                        os.path.join(run_dir, name))


def _resume_config(run, data, args, overrides):
    r"""The config of the run to resume: its data fingerprint is checked
    first (other data is the more fundamental mistake), then the given
    options against its :obj:`config.json`."""
    from pmm_geo.train import RunDir, TrainConfig
    from pmm_geo.train.checkpoint import (
        check_fingerprint,
        data_fingerprint,
        load_checkpoint,
    )

    if not os.path.isfile(run.file(RunDir.CONFIG)):
        raise CommandError(f'nothing to resume in {run.path} (no '
                           f'{RunDir.CONFIG})')
    state = run.file(RunDir.STATE)
    if os.path.isfile(state):
        check_fingerprint(load_checkpoint(state, what='training state'),
                          data_fingerprint(data), state)
    config = run.read_config()
    given = (TrainConfig.from_json(args.config).to_dict()
             if args.config else {})
    given.update({k: list(v) if k == 'ks' else v
                  for k, v in overrides.items()})
    saved = config.to_dict()
    differ = [k for k, v in given.items() if v != saved[k]]
    if differ:
        raise CommandError(
            f'--resume continues the run with its own config.json, '
            f'but the given {", ".join(differ)} '
            f'{"differs" if len(differ) == 1 else "differ"} from it '
            f'(drop those options, or start a new run with another '
            f'--out)')
    return config


def _evaluate(args) -> int:
    from pmm_geo.train import RunDir

    run = RunDir(args.run_dir)
    if not run.exists():
        raise CommandError(f'RUN_DIR not found: {args.run_dir}')
    metrics = run.read_metrics()
    print(json.dumps(metrics, indent=2) if args.json else
          format_metrics(metrics))
    return 0


def _recommend(args) -> int:
    from pmm_geo.train import load_recommender

    if args.k < 1:
        raise CommandError(f'-k must be >= 1, got {args.k}')
    if not os.path.isdir(args.run_dir):
        raise CommandError(f'RUN_DIR not found: {args.run_dir}')
    recommender = load_recommender(args.run_dir)
    rows = recommender.recommend_ids(args.users, args.k, args.exclude_seen)
    if args.format == 'json':
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for row in rows:
        items = (f'{i} ({s:.4f})' for i, s in zip(row['items'],
                                                 row['scores'])) \
            if args.scores else map(str, row['items'])
        print(f"user {row['user']}: " + ' '.join(items))
    return 0


def format_metrics(metrics: Dict[str, Dict[str, Any]],
                   keys: Sequence[str] = ('recall', 'ndcg')) -> str:
    r"""A plain-text table of a :obj:`metrics.json` mapping."""
    first = next(iter(metrics.values()), None)
    if first is None:
        return '(no metrics)'
    cols = [c for key in keys for c in first['test'] if c.startswith(key +
                                                                     '@')]
    header = ['model', 'split'] + cols + ['epochs', 'seconds', 'params']
    rows: List[List[str]] = []
    for model, entry in metrics.items():
        for split in ('val', 'test'):
            extra = ([str(entry.get('epochs', '')),
                      f"{entry.get('train_seconds', 0):.1f}",
                      f"{entry.get('params', 0):,}"]
                     if split == 'test' else ['', '', ''])
            rows.append([model, split] +
                        [f'{entry[split].get(c, float("nan")):.4f}'
                         for c in cols] + extra)
    widths = [max(len(r[i]) for r in rows + [header])
              for i in range(len(header))]
    lines = ['  '.join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ['  '.join(v.ljust(w) for v, w in zip(row, widths))
              for row in rows]
    return '\n'.join(lines)


COMMANDS = {'prepare': _prepare, 'features': _features, 'train': _train,
            'evaluate': _evaluate, 'recommend': _recommend}


def _one_line(error: BaseException) -> str:
    text = ' '.join(str(error).split())
    return text or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None,
                  line=None) -> None:
    print(f'{PROG}: warning: {message}', file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Runs the command line; returns the exit status."""
    with warnings.catch_warnings():  # Restored on return (in-process use).
        warnings.filterwarnings('ignore', message='Sparse CSR tensor '
                                'support')
        warnings.showwarning = _show_warning  # One line, no source echo.
        return _main(argv)


class _sigterm_as_interrupt:
    r"""Within the block, SIGTERM raises :class:`Terminated` (main thread
    only: signal handlers cannot be set from others)."""
    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum, frame):
        raise Terminated()

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _user_errors() -> tuple:
    r"""The exceptions that are the user's input or environment (reported as
    one line), as opposed to bugs (tracebacks)."""
    from pmm_geo.content.text import ModelLoadError
    from pmm_geo.data import DataFormatError
    from pmm_geo.data.tables import MissingExtraError
    from pmm_geo.train import CheckpointError, ConfigError
    return (CommandError, ConfigError, CheckpointError, DataFormatError,
            MissingExtraError, ModelLoadError, ValueError, OSError,
            FloatingPointError)


def run_guarded(run: Callable[[], int], prog: str,
                hint: str = '') -> int:
    r"""Runs :obj:`run()` as :obj:`pmm-geo` runs a command: an error of the
    input is one line on stderr and status 1; Ctrl-C and SIGTERM print
    one line (plus :obj:`hint`) and give status 130 or 143. Scripts use it
    as :obj:`sys.exit(run_guarded(lambda: main(), 'my_script.py'))`."""
    try:
        with _sigterm_as_interrupt():
            return run()
    except KeyboardInterrupt as error:
        terminated = isinstance(error, Terminated)
        print(f'{prog}: {"terminated" if terminated else "interrupted"}'
              f'{hint}', file=sys.stderr)
        return TERMINATED if terminated else INTERRUPTED
    except UsageError as error:
        print(f'{prog}: error: {_one_line(error)} (see {prog} --help)',
              file=sys.stderr)
        return USAGE_ERROR
    except _user_errors() as error:
        message = _one_line(error)
        if not message.startswith(PROG):
            message = f'{prog}: error: {message}'
        print(message, file=sys.stderr)
        return ERROR


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except CommandError as error:
        print(_one_line(error), file=sys.stderr)
        return USAGE_ERROR
    args.argv = argv
    hint = {'train': '; continue with --resume',
            'features': '; run it again to continue'}
    return run_guarded(lambda: COMMANDS[args.command](args),
                       f'{PROG} {args.command}', hint.get(args.command, ''))


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
