r"""`pmm_geo.data.prepare` and `pmm-geo prepare`: raw interactions to a
PromptMM folder, checked against hand-computed splits."""
import gzip
import json

import numpy as np
import pytest
import torch

from pmm_geo.cli import main
from pmm_geo.data import (
    DataFormatError,
    k_core,
    prepare,
    read_id_map,
    read_interactions,
    read_promptmm,
    split_edge_index,
)
from pmm_geo.data.prepare import chronological_split, parse_split


def write(path, lines):
    path.write_text('\n'.join(lines) + '\n')
    return path


def lists(root, split):
    return json.loads((root / f'{split}.json').read_text())


def by_original(root, split):
    r"""{original user: [original items]} of one written split."""
    users = {v: k for k, v in json.loads(
        (root / 'user2id.json').read_text()).items()}
    items = {v: k for k, v in json.loads(
        (root / 'item2id.json').read_text()).items()}
    return {users[int(u)]: sorted(items[i] for i in v)
            for u, v in lists(root, split).items() if v}


# A log whose rows are out of time order, with a repeat and a short user.
CSV = ['user_id,item_id,timestamp,rating',
       'ann,x,5,1', 'ann,y,1,1', 'ann,z,3,1', 'ann,w,4,1',
       'bob,y,2,1', 'bob,z,1,1', 'bob,x,9,1',
       'cat,z,7,1', 'cat,w,8,1']


def test_loo_split_by_time(tmp_path):
    src = write(tmp_path / 'log.csv', CSV)
    result = prepare(str(src), tmp_path / 'out')
    out = tmp_path / 'out'
    # ann by time: y(1) z(3) w(4) x(5); bob: z(1) y(2) x(9); cat: 2 only.
    assert by_original(out, 'train') == {'ann': ['y', 'z'], 'bob': ['z'],
                                         'cat': ['w', 'z']}
    assert by_original(out, 'val') == {'ann': ['w'], 'bob': ['y']}
    assert by_original(out, 'test') == {'ann': ['x'], 'bob': ['x']}
    # Users by first appearance; items along the users' time lines.
    assert result.user_ids == ['ann', 'bob', 'cat']
    assert result.item_ids == ['y', 'z', 'w', 'x']
    assert read_id_map(out, 'item2id.json') == {'y': 0, 'z': 1, 'w': 2,
                                                'x': 3}
    assert result.report['train_only_users'] == 1
    report = json.loads((out / 'prepare.json').read_text())
    assert report['splits'] == {'train': 5, 'val': 2, 'test': 2}
    data = read_promptmm(out)
    assert data['user'].num_nodes == 3 and data['item'].num_nodes == 4


def test_held_out_repeats_are_dropped(tmp_path):
    # ann: a b a -> the test a repeats train; bob: a b c c -> test c
    # repeats the validation item.
    src = write(tmp_path / 'log.tsv', [
        'user_id\titem_id\ttimestamp', 'ann\ta\t1', 'ann\tb\t2', 'ann\ta\t3',
        'bob\ta\t1', 'bob\tb\t2', 'bob\tc\t3', 'bob\tc\t4',
        'cat\tb\t1', 'cat\tb\t2', 'cat\tc\t3', 'cat\ta\t4'])
    result = prepare(str(src), tmp_path / 'out')
    out = tmp_path / 'out'
    assert by_original(out, 'train') == {'ann': ['a'], 'bob': ['a', 'b'],
                                         'cat': ['b']}
    assert by_original(out, 'val') == {'ann': ['b'], 'bob': ['c'],
                                       'cat': ['c']}
    assert by_original(out, 'test') == {'cat': ['a']}
    assert result.report['dropped_heldout_repeats'] == 2
    assert result.report['merged_repeats'] == 1  # cat's second b.


def test_ratio_split_uses_recbole_rounding():
    assert parse_split('8,1,1') == pytest.approx((0.8, 0.1, 0.1))
    # 10 -> 8/1/1; 5 -> 3/1/1 (a share under one item still gets one);
    # 2 -> 1/0/1 (test first, then train is down to one).
    from pmm_geo.data.prepare import _ratio_counts
    ratios = (0.8, 0.1, 0.1)
    assert _ratio_counts(10, ratios) == [8, 1, 1]
    assert _ratio_counts(5, ratios) == [3, 1, 1]
    assert _ratio_counts(2, ratios) == [1, 0, 1]
    assert _ratio_counts(1, ratios) == [1, 0, 0]
    assert _ratio_counts(20, (0.6, 0.2, 0.2)) == [12, 4, 4]


def test_ratio_split_end_to_end(tmp_path):
    rows = ['user_id,item_id,timestamp']
    rows += [f'u,i{t},{t}' for t in range(10)]  # 8 / 1 / 1
    rows += [f'v,i{t},{t}' for t in range(5)]   # 3 / 1 / 1
    src = write(tmp_path / 'log.csv', rows)
    prepare(str(src), tmp_path / 'out', split='0.8,0.1,0.1')
    out = tmp_path / 'out'
    assert by_original(out, 'train')['u'] == sorted(f'i{t}'
                                                    for t in range(8))
    assert by_original(out, 'val') == {'u': ['i8'], 'v': ['i3']}
    assert by_original(out, 'test') == {'u': ['i9'], 'v': ['i4']}


def test_k_core_cascades():
    # With k=2: item q has one user -> dropped; then user c has one item
    # left -> dropped; then item r has one user -> dropped.
    log = read_log([('a', 'p'), ('a', 'r'), ('b', 'p'), ('b', 'r'),
                    ('c', 'p'), ('c', 'q'), ('d', 'r'), ('d', 'p')])
    kept = k_core(log, 2)
    pairs = {(kept.user_ids[u], kept.item_ids[i])
             for u, i in zip(kept.user.tolist(), kept.item.tolist())}
    assert pairs == {('a', 'p'), ('a', 'r'), ('b', 'p'), ('b', 'r'),
                     ('d', 'r'), ('d', 'p')}
    log = read_log([('a', 'p'), ('a', 'q'), ('b', 'p'), ('c', 'q'),
                    ('c', 'r')])
    kept = k_core(log, 2)
    # p: a, b; q: a, c; r: c only -> r goes; then c has q only -> c goes;
    # q has a only -> q goes; a has p only -> a goes; p: b only -> all go.
    assert kept.size == 0
    # Repeated records count once.
    log = read_log([('a', 'p'), ('a', 'p'), ('b', 'p')])
    assert k_core(log, 2).size == 0


def read_log(pairs, tmp=None):
    from pmm_geo.data.prepare import InteractionLog, _codes
    users, user = _codes([u for u, _ in pairs])
    items, item = _codes([i for _, i in pairs])
    return InteractionLog(user, item, np.arange(len(pairs), dtype=float),
                          users, items, '<test>', 'table', [])


def test_separators_quotes_gzip_and_dates(tmp_path):
    semi = write(tmp_path / 'a.txt', ['user_id;item_id;timestamp',
                                      'u;"x;1";2020-01-02', 'u;y;2020-01-01',
                                      'u;z;2020-01-03T10:00:00+00:00'])
    log = read_interactions(str(semi))
    order = np.argsort(log.time)
    assert [log.item_ids[log.item[j]] for j in order] == ['y', 'x;1', 'z']
    gz = tmp_path / 'b.csv.gz'
    with gzip.open(gz, 'wt') as f:
        f.write('item_id,user_id\nx,u\ny,u\n')
    log = read_interactions(str(gz))
    assert log.user_ids == ['u'] and log.item_ids == ['x', 'y']
    assert log.notes == ["no 'timestamp' column: the row order is the time "
                         'order']


def test_recbole_atomic_inter(tmp_path):
    src = write(tmp_path / 'ml.inter', [
        'user_id:token\titem_id:token\trating:float\ttimestamp:float',
        '1\t10\t4\t300', '1\t11\t4\t100', '1\t12\t4\t200', '2\t10\t3\t5'])
    log = read_interactions(str(src))
    assert log.kind == 'recbole-atomic'
    assert log.time.tolist() == [300, 100, 200, 5]


def test_recbole_sequential_with_index_maps(tmp_path):
    # The MISSRec / UniSRec layout: tokens plus <name>.user2index and
    # <name>.item2index beside the files.
    header = 'user_id:token\titem_id_list:token_seq\titem_id:token'
    write(tmp_path / 'Sci.train.inter', [header, '0\t0\t1', '0\t0 1\t2',
                                         '1\t2\t0'])
    write(tmp_path / 'Sci.test.inter', [header, '0\t0 1 2 3\t1',
                                        '1\t2 0\t3'])
    write(tmp_path / 'Sci.user2index', ['AAA\t0', 'BBB\t1'])
    write(tmp_path / 'Sci.item2index', ['B01\t0', 'B02\t1', 'B03\t2',
                                        'B04\t3'])
    log = read_interactions(str(tmp_path / 'Sci.test.inter'))
    assert log.kind == 'recbole-sequential'
    assert log.user_ids == ['AAA', 'BBB']
    # Both files together: the longest history per user.
    prepare(str(tmp_path), tmp_path / 'out')
    out = tmp_path / 'out'
    # AAA: B01 B02 B03 B04 B02 -> test B02 repeats train: dropped.
    assert by_original(out, 'train') == {'AAA': ['B01', 'B02', 'B03'],
                                         'BBB': ['B03']}
    assert by_original(out, 'val') == {'AAA': ['B04'], 'BBB': ['B01']}
    assert by_original(out, 'test') == {'BBB': ['B04']}


def test_sequential_rows_must_agree(tmp_path):
    header = 'user_id:token\titem_id_list:token_seq\titem_id:token'
    src = write(tmp_path / 'a.inter', [header, '0\t0 1\t2', '0\t0 5\t2'])
    with pytest.raises(DataFormatError, match=r"a\.inter.*item_id_list.*"
                       r"user '0' on line 3 disagrees with line 2"):
        read_interactions(str(src))


def test_parquet(tmp_path):
    pa = pytest.importorskip('pyarrow', reason='pyarrow (the parquet '
                             'extra) is not installed')
    import datetime

    import pyarrow.parquet as pq
    table = pa.table({'user_id': [1, 1, 2], 'item_id': ['a', 'b', 'a'],
                      'timestamp': [datetime.datetime(2021, 1, 2),
                                    datetime.datetime(2021, 1, 1),
                                    datetime.datetime(2021, 1, 3)]})
    pq.write_table(table, tmp_path / 'log.parquet')
    log = read_interactions(str(tmp_path / 'log.parquet'))
    assert log.user_ids == ['1', '2'] and log.item_ids == ['a', 'b']
    assert log.time[1] < log.time[0] < log.time[2]


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith('pyarrow'):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_pyarrow)
    monkeypatch.setattr('importlib.import_module', lambda name: no_pyarrow(
        name))
    (tmp_path / 'log.parquet').write_bytes(b'PAR1')
    with pytest.raises(ImportError, match=r"pip install 'pmm_geo\[parquet\]'"):
        read_interactions(str(tmp_path / 'log.parquet'))


@pytest.mark.parametrize('lines,kwargs,match', [
    (['user,item', 'a,b'], {}, r"log\.csv: field 'user_id': no column "
     r"'user_id' in the header \['user', 'item'\] \(choose it with "
     r"--user-col\)"),
    (['user_id,item_id', 'a,'], {}, r"field 'item_id': empty value on "
     r'line 2'),
    (['user_id,item_id,timestamp', 'a,b,nan'], {},
     r"field 'timestamp': 'nan' on line 2 is not a finite timestamp"),
    (['user_id,item_id,timestamp', 'a,b,soon'], {},
     r"'soon' on line 2 is neither a number nor an ISO 8601 date"),
    (['user_id,item_id', 'a,b'], {'time_col': 'ts', 'time_required': True},
     r"no column 'ts'"),
    (['user_id,item_id', 'a,b,c'], {}, r"field 'line 2': 3 ','-separated "
     r'fields, but the header has 2'),
    (['user_id,item_id'], {}, r"field 'rows': no interactions"),
    ([''], {}, r"field 'header': the file is empty"),
    (['user_id item_id', 'a b'], {}, r'cannot tell the separator'),
    (['user_id,item_id,user_id', 'a,b,c'], {}, r"column 'user_id' appears "
     r'twice'),
])
def test_bad_tables_name_file_field_and_line(tmp_path, lines, kwargs, match):
    src = write(tmp_path / 'log.csv', lines)
    with pytest.raises(DataFormatError, match=match):
        read_interactions(str(src), **kwargs)


def test_prepare_refuses_what_cannot_be_a_dataset(tmp_path):
    src = write(tmp_path / 'log.csv', ['user_id,item_id', 'a,x', 'a,y'])
    with pytest.raises(DataFormatError, match='the val split is empty'):
        prepare(str(src), tmp_path / 'out')
    src = write(tmp_path / 'log.csv', CSV)
    with pytest.raises(DataFormatError, match='no interaction is left in '
                       'the 9-core'):
        prepare(str(src), tmp_path / 'out', min_count=9)
    prepare(str(src), tmp_path / 'out')
    with pytest.raises(DataFormatError, match=r'already holds a dataset '
                       r'\(train.json, val.json, test.json, item2id.json\)'):
        prepare(str(src), tmp_path / 'out')
    for bad in ('0.8,0.2', 'a,b,c', '0.8,0,0.2', 'lo', '1,nan,1'):
        with pytest.raises(ValueError, match='--split must be'):
            parse_split(bad)


def test_read_id_map_checks_a_bijection(tmp_path):
    (tmp_path / 'item2id.json').write_text('{"a": 0, "b": 2}')
    with pytest.raises(DataFormatError, match=r'not 0\.\.1, each once'):
        read_id_map(tmp_path)
    (tmp_path / 'item2id.json').write_text('{"a": "0"}')
    with pytest.raises(DataFormatError, match=r"field '\"a\"': index '0' "
                       r'is not an integer'):
        read_id_map(tmp_path)
    with pytest.raises(DataFormatError, match='made by'):
        read_id_map(tmp_path / 'nope')


# Command line ###############################################################


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prepare_then_train(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ['customer;product;when']
    for u in range(30):
        for t, i in enumerate(rng.choice(25, size=6, replace=False)):
            rows.append(f'c{u};p{i};{t}')
    src = write(tmp_path / 'log.txt', rows)
    out = tmp_path / 'data'
    code, stdout, err = run(['prepare', str(src), '--out', str(out),
                             '--user-col', 'customer', '--item-col',
                             'product', '--time-col', 'when'], capsys)
    assert code == 0, err
    assert 'Split loo: train 120 / val 30 / test 30' in stdout
    config = tmp_path / 'tiny.json'
    config.write_text(json.dumps({'epochs': 2, 'embedding_dim': 8,
                                  'student_dim': 8}))
    code, stdout, err = run(['train', str(out), '--out', str(tmp_path / 'r'),
                             '--model', 'lightgcn', '--config', str(config),
                             '--quiet'], capsys)
    assert code == 0, err
    # 25 items: the default cut-off 50 is dropped with a one-line note.
    assert err.strip() == ('pmm-geo: warning: metric cut-off(s) 50 exceed '
                           'the 25 items: reporting @10, @20, selecting on '
                           'recall@20')
    metrics = json.loads((tmp_path / 'r' / 'metrics.json').read_text())
    assert set(metrics['lightgcn']['test']) == {
        f'{m}@{k}' for m in ('recall', 'ndcg', 'precision', 'hit')
        for k in (10, 20)}


def test_cli_prepare_errors(tmp_path, capsys):
    src = write(tmp_path / 'log.csv', ['user,item', 'a,b'])
    code, _, err = run(['prepare', str(src), '--out', str(tmp_path / 'o')],
                       capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("pmm-geo prepare: error: ") and 'log.csv' in err \
        and "no column 'user_id'" in err
    code, _, err = run(['prepare', str(tmp_path / 'missing.csv'), '--out',
                        str(tmp_path / 'o')], capsys)
    assert code == 1 and 'INTERACTIONS not found' in err
    for argv, what in ((['prepare', str(src)], '--out'),
                       (['prepare', str(src), '--out', 'o', '--min-count',
                         '0'], 'must be >= 1')):
        code, _, err = run(argv, capsys)
        assert code == 2 and what in err and len(err.strip().splitlines()) \
            == 1
    code, _, err = run(['prepare', str(src), '--out', str(tmp_path / 'o'),
                        '--split', '1,2'], capsys)
    assert code == 1 and '--split must be' in err


def test_train_hints_at_prepare_and_reads_mmrec(tmp_path, capsys,
                                                synthetic_data):
    from pmm_geo.data import write_mmrec
    empty = tmp_path / 'raw'
    empty.mkdir()
    (empty / 'log.csv').write_text('user_id,item_id\n')
    code, _, err = run(['train', str(empty), '--out', str(tmp_path / 'r')],
                       capsys)
    assert code == 1 and "run 'pmm-geo prepare INTERACTIONS --out DIR'" in err
    mmrec = tmp_path / 'mmrec'
    write_mmrec(synthetic_data, mmrec, 'toy')
    config = tmp_path / 'tiny.json'
    config.write_text(json.dumps({'epochs': 1, 'embedding_dim': 8,
                                  'student_dim': 8}))
    code, _, err = run(['train', str(mmrec), '--out', str(tmp_path / 'r'),
                        '--model', 'lightgcn', '--config', str(config),
                        '--quiet'], capsys)
    assert code == 0, err
    # Forced to the other format: the hint names read_mmrec.
    code, _, err = run(['train', str(mmrec), '--out', str(tmp_path / 'r2'),
                        '--format', 'promptmm'], capsys)
    assert code == 1 and 'read_mmrec' in err and 'train.json' in err


def test_realdata_scientific_from_raw(shared_data, tmp_path):
    raw = shared_data / 'amazon_scientific_mm'
    out = tmp_path / 'sci'
    result = prepare(str(raw / 'Scientific.test.inter'), out)
    # The raw sequences reproduce the published split exactly, with items
    # and users in the same order, and the maps give the ASINs.
    ours, published = read_promptmm(out), read_promptmm(
        shared_data / 'scientific')
    for split in ('train', 'val', 'test'):
        assert torch.equal(split_edge_index(ours, split),
                           split_edge_index(published, split))
    asin = (raw / 'Scientific.item2index').read_text().split('\n')[0]
    assert result.item_ids[0] == asin.split('\t')[0]
    # The three files of the folder together give the same.
    prepare(str(raw), tmp_path / 'all')
    for split in ('train', 'val', 'test'):
        assert lists(tmp_path / 'all', split) == lists(out, split)


def test_recommend_speaks_original_ids(tmp_path, capsys):
    from pmm_geo.train import load_recommender
    rng = np.random.default_rng(1)
    rows = ['user_id,item_id,timestamp']
    for u in range(20):
        for t, i in enumerate(rng.choice(30, size=5, replace=False)):
            rows.append(f'U{u},I{i},{t}')
    src = write(tmp_path / 'log.csv', rows)
    data, run_dir = tmp_path / 'data', tmp_path / 'run'
    assert main(['prepare', str(src), '--out', str(data)]) == 0
    config = tmp_path / 'tiny.json'
    config.write_text(json.dumps({'epochs': 2, 'embedding_dim': 8,
                                  'student_dim': 8, 'ks': [10, 20]}))
    assert main(['train', str(data), '--out', str(run_dir), '--model',
                 'lightgcn', '--config', str(config), '--quiet']) == 0
    assert (run_dir / 'item2id.json').read_text() == \
        (data / 'item2id.json').read_text()
    capsys.readouterr()
    # JSON: original ids, scores descending, never a train item.
    code, out, err = run(['recommend', str(run_dir), '--users', 'U3', 'U0',
                          '-k', '5', '--format', 'json'], capsys)
    assert code == 0, err
    rows = json.loads(out)
    train = by_original(data, 'train')
    assert [r['user'] for r in rows] == ['U3', 'U0']
    for row in rows:
        assert len(row['items']) == 5 and all(i.startswith('I')
                                              for i in row['items'])
        assert row['scores'] == sorted(row['scores'], reverse=True)
        assert not set(row['items']) & set(train[row['user']])
    # The scores are the served embeddings' dot products.
    rec = load_recommender(str(run_dir))
    items = json.loads((data / 'item2id.json').read_text())
    users = json.loads((data / 'user2id.json').read_text())
    u = users['U3']
    expected = [float(rec.user_emb[u] @ rec.item_emb[items[i]])
                for i in rows[0]['items']]
    assert rows[0]['scores'] == pytest.approx(expected, rel=1e-5)
    # --no-exclude-seen ranks over all items: the plain top-k by score.
    code, out, err = run(['recommend', str(run_dir), '--users', 'U3', '-k',
                          str(len(items)), '--format', 'json',
                          '--no-exclude-seen'], capsys)
    assert code == 0, err
    full = json.loads(out)[0]
    assert set(train['U3']) < set(full['items'])
    scores = rec.user_emb[u] @ rec.item_emb.t()
    assert full['scores'] == pytest.approx(
        scores.sort(descending=True).values.tolist(), rel=1e-5)
    # Text, with scores.
    code, out, _ = run(['recommend', str(run_dir), '--users', 'U3', '-k',
                        '2', '--scores'], capsys)
    first, second = rows[0]['items'][:2]
    assert out.startswith(f'user U3: {first} (') and f' {second} (' in out
    code, _, err = run(['recommend', str(run_dir), '--users', '3'], capsys)
    assert code == 1 and "unknown user '3'" in err
    code, _, err = run(['recommend', str(run_dir), '--users', 'U3',
                        '--format', 'xml'], capsys)
    assert code == 2 and 'invalid choice' in err
