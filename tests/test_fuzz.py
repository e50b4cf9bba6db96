r"""Property-based tests (hypothesis) of the readers and `prepare`: whatever
the files hold, reading either succeeds or raises
:class:`pmm_geo.data.DataFormatError` naming the file and the field, never
another exception. A bounded number of examples keeps this to seconds."""
import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip('hypothesis', reason='hypothesis (the test '
                                 'extra) is not installed')
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pmm_geo.data import (  # noqa: E402
    DataFormatError,
    prepare,
    read_id_map,
    read_mmrec,
    read_promptmm,
    split_edge_index,
)

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# JSON values: mostly well-formed {"user": [items]} with hostile corners.
ids = st.one_of(st.integers(-3, 12), st.integers(2**62, 2**64),
                st.floats(allow_nan=True), st.booleans(), st.none(),
                st.text(max_size=3))
keys = st.one_of(st.integers(0, 10).map(str), st.text(max_size=4),
                 st.sampled_from(['-1', '01', '١', '1e3', ' 2', '99999999999'
                                  '999999999']))
splits = st.one_of(
    st.dictionaries(keys, st.lists(ids, max_size=5), max_size=6),
    st.dictionaries(keys, st.lists(st.integers(0, 9), max_size=5),
                    max_size=6),
    st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5),
    st.dictionaries(keys, st.one_of(st.integers(), st.text(max_size=2)),
                    max_size=3))


def json_text(draw_value, corrupt):
    text = json.dumps(draw_value)
    if corrupt is not None:  # Truncate or splice in junk.
        cut, junk = corrupt
        text = text[:cut] + junk
    return text


corruptions = st.one_of(st.none(), st.tuples(st.integers(0, 40),
                                             st.text(max_size=3)))
feature_arrays = st.one_of(
    st.none(),
    st.builds(lambda rows, cols, dtype, fill: np.full(
        (rows, cols), fill).astype(dtype),
        st.integers(0, 12), st.integers(0, 3),
        st.sampled_from(['float32', 'float64', 'float16', 'int64', 'uint8',
                         'bool', 'complex64']),
        st.sampled_from([0.0, 1.0, -2.5, math.nan, math.inf])),
    st.builds(lambda shape: np.ones(shape, dtype=np.float32),
              st.lists(st.integers(0, 3), max_size=3).map(tuple)),
    st.just(np.array(['a', 'b'])), st.just(b'\x93NUMPY garbage'))


def assert_names_file(error: DataFormatError, root: str):
    assert root in error.source, error
    assert error.field and str(error).startswith(error.source), error


@FUZZ
@given(train=splits, val=splits, test=splits, corrupt=corruptions,
       image=feature_arrays, text=feature_arrays)
def test_read_promptmm_loads_or_names_the_file(train, val, test, corrupt,
                                               image, text):
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root)
        for name, value in (('train', train), ('val', val), ('test', test)):
            (folder / f'{name}.json').write_text(json_text(
                value, corrupt if name == 'val' else None))
        for name, array in (('image', image), ('text', text)):
            if isinstance(array, bytes):
                (folder / f'{name}_feat.npy').write_bytes(array)
            elif array is not None:
                np.save(folder / f'{name}_feat.npy', array)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                data = read_promptmm(root)
        except DataFormatError as error:
            assert_names_file(error, root)
            return
        assert data['item'].num_nodes >= 1
        for split in ('val', 'test'):  # Held out never repeats train.
            train_pairs = set(map(tuple, split_edge_index(
                data, 'train').t().tolist()))
            held = set(map(tuple, split_edge_index(data, split).t().tolist()))
            assert not train_pairs & held


inter_cells = st.one_of(st.integers(-2, 6).map(str), st.sampled_from(
    ['', ' ', '1.0', 'x', '3\t4', '99999999999999999999', '0x1']))


@FUZZ
@given(header=st.lists(st.sampled_from(['userID', 'itemID', 'x_label',
                                        'rating', 'userID:token', 'ts']),
                       max_size=5),
       rows=st.lists(st.lists(inter_cells, min_size=0, max_size=5),
                     max_size=8),
       feature=feature_arrays)
def test_read_mmrec_loads_or_names_the_file(header, rows, feature):
    with tempfile.TemporaryDirectory() as root:
        lines = ['\t'.join(header)] + ['\t'.join(r) for r in rows]
        Path(root, 'toy.inter').write_text('\n'.join(lines))
        if isinstance(feature, np.ndarray):
            np.save(Path(root, 'image_feat.npy'), feature)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                read_mmrec(root, 'toy')
        except DataFormatError as error:
            assert_names_file(error, root)


# prepare ######################################################################

raw_ids = st.one_of(st.sampled_from(['a', 'b', 'c', 'd', 'e', 'f']),
                    st.text(alphabet='ab,;"\t x\\é', max_size=3))
stamps = st.one_of(st.integers(0, 5).map(str), st.sampled_from(
    ['nan', 'inf', '-inf', '', '2020-01-01', '2020-13-01', '1e400', 'soon',
     '3.5']))
records = st.lists(st.tuples(raw_ids, raw_ids, stamps), max_size=25)


@FUZZ
@given(rows=records, sep=st.sampled_from([',', '\t', ';']),
       header=st.sampled_from([('user_id', 'item_id', 'timestamp'),
                               ('user_id', 'item_id', 'when'),
                               ('item_id', 'user_id', 'timestamp'),
                               ('user', 'item_id', 'timestamp')]),
       min_count=st.integers(1, 3),
       split=st.sampled_from(['loo', '0.8,0.1,0.1', '0.5,0.25,0.25']),
       duplicate=st.booleans())
def test_prepare_writes_a_valid_folder_or_names_the_file(
        rows, sep, header, min_count, split, duplicate):
    import csv
    import io
    if duplicate:
        rows = rows + rows[:3]
    with tempfile.TemporaryDirectory() as root:
        src = Path(root, 'log.txt')
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=sep, lineterminator='\n',
                            quoting=csv.QUOTE_MINIMAL if sep != '\t' else
                            csv.QUOTE_NONE, escapechar='\\')
        writer.writerow(header)
        writer.writerows(rows)
        src.write_text(buffer.getvalue())
        out = Path(root, 'out')
        try:
            prepare(str(src), out, min_count=min_count, split=split)
        except DataFormatError as error:
            assert_names_file(error, root)
            return
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # No duplicates left to merge.
            data = read_promptmm(out)
        items = read_id_map(out, 'item2id.json')
        users = read_id_map(out, 'user2id.json')
        assert data['item'].num_nodes == len(items)
        assert data['user'].num_nodes == len(users)
        train = set(map(tuple, split_edge_index(data, 'train').t().tolist()))
        for held in ('val', 'test'):
            pairs = split_edge_index(data, held).t().tolist()
            assert pairs and not train & set(map(tuple, pairs))


@FUZZ
@given(obj=st.one_of(
    st.dictionaries(st.text(max_size=3), st.one_of(
        st.integers(-1, 4), st.text(max_size=2), st.floats()), max_size=5),
    st.lists(st.integers(), max_size=3), st.text(max_size=4)),
    corrupt=corruptions)
def test_read_id_map_loads_or_names_the_file(obj, corrupt):
    with tempfile.TemporaryDirectory() as root:
        Path(root, 'item2id.json').write_text(json_text(obj, corrupt))
        try:
            mapping = read_id_map(root)
        except DataFormatError as error:
            assert_names_file(error, root)
            return
        assert sorted(mapping.values()) == list(range(len(mapping)))
