import json
import warnings

import numpy as np
import pytest
import torch

from pmm_geo.data import (
    DataFormatError,
    modalities,
    read_mmrec,
    read_promptmm,
    split_edge_index,
    write_mmrec,
    write_promptmm,
)

SPLITS = ('train', 'val', 'test')


def write_json_splits(root, train, val=None, test=None):
    for name, obj in zip(SPLITS, (train, val or {}, test or {})):
        (root / f'{name}.json').write_text(json.dumps(obj))


def write_inter(root, name, rows, header='userID\titemID\tx_label'):
    text = '\n'.join([header] + ['\t'.join(map(str, r)) for r in rows])
    (root / f'{name}.inter').write_text(text + '\n')


def assert_same_data(a, b):
    assert a['user'].num_nodes == b['user'].num_nodes
    assert a['item'].num_nodes == b['item'].num_nodes
    assert modalities(a) == modalities(b)
    for name in modalities(a):
        assert torch.equal(a['item'][name], b['item'][name])
    for split in SPLITS:
        assert torch.equal(split_edge_index(a, split),
                           split_edge_index(b, split))


# Reading ######################################################################


def test_read_promptmm_hand_written(tmp_path):
    # Written by hand (not by write_promptmm), so a bug shared by the
    # writer and the reader cannot hide.
    write_json_splits(tmp_path,
                      train={'0': [2, 0, 1], '1': [1], '3': [], '2': [3]},
                      val={'0': [3], '1': [], '2': [0]},
                      test={'1': [2], '4': []})
    image = np.arange(20, dtype=np.float32).reshape(5, 4) + 1
    text = np.ones((5, 3), dtype=np.float64)
    np.save(tmp_path / 'text_feat.npy', text)
    np.save(tmp_path / 'image_feat.npy', image)

    data = read_promptmm(str(tmp_path))
    assert data['user'].num_nodes == 5  # Key "4" (an empty list) counts.
    assert data['item'].num_nodes == 5  # Feature rows, not max id + 1.
    assert modalities(data) == ['image', 'text']
    assert torch.equal(data['item'].image, torch.from_numpy(image))
    assert data['item'].text.dtype == torch.float32
    assert split_edge_index(data, 'train').tolist() == [[0, 0, 0, 1, 2],
                                                        [0, 1, 2, 1, 3]]
    assert split_edge_index(data, 'val').tolist() == [[0, 2], [3, 0]]
    assert split_edge_index(data, 'test').tolist() == [[1], [2]]
    rev = data['item', 'rev_interacts', 'user'].edge_index
    assert torch.equal(rev, split_edge_index(data, 'train').flip(0))


def test_read_promptmm_without_features(tmp_path):
    write_json_splits(tmp_path, train={'0': [6], '1': [2]},
                      val={'0': [1]}, test={'1': [0]})
    data = read_promptmm(str(tmp_path))
    assert modalities(data) == []
    assert data['item'].num_nodes == 7  # Largest item id + 1.
    assert data['user'].num_nodes == 2


def test_modality_order_and_any_name(tmp_path):
    write_json_splits(tmp_path, train={'0': [0, 1]})
    for name in ('zeta', 'audio', 'text', 'image', 'depth'):
        np.save(tmp_path / f'{name}_feat.npy', np.ones((2, 3), np.float32))
    # Not a feature file: ignored.
    np.save(tmp_path / 'user_graph_dict.npy', np.ones(3))
    data = read_promptmm(str(tmp_path))
    assert modalities(data) == ['image', 'text', 'audio', 'depth', 'zeta']


def test_read_mmrec_hand_written(tmp_path):
    # Columns in another order, extra columns, a RecBole type suffix.
    write_inter(tmp_path, 'toy', [
        (5, 0, 1, 0, 1600000000),
        (5, 0, 2, 0, 1600000001),
        (3, 1, 0, 1, 1600000002),
        (4, 1, 1, 2, 1600000003),
        (1, 2, 3, 0, 1600000004),
    ], header='rating\tuserID:token\titemID\tx_label\ttimestamp')
    np.save(tmp_path / 'image_feat.npy', np.eye(4, dtype=np.float32))
    data = read_mmrec(str(tmp_path), 'toy')
    assert data['user'].num_nodes == 3
    assert data['item'].num_nodes == 4
    assert split_edge_index(data, 'train').tolist() == [[0, 0, 2], [1, 2, 3]]
    assert split_edge_index(data, 'val').tolist() == [[1], [0]]
    assert split_edge_index(data, 'test').tolist() == [[1], [1]]
    assert torch.equal(data['item'].image, torch.eye(4))


def test_read_mmrec_without_held_out_rows(tmp_path):
    write_inter(tmp_path, 'toy', [(0, 1, 0), (1, 0, 0)])
    data = read_mmrec(str(tmp_path), 'toy')
    assert split_edge_index(data, 'val').size() == (2, 0)
    assert split_edge_index(data, 'test').size() == (2, 0)


@pytest.mark.parametrize('fmt', ['promptmm', 'mmrec'])
def test_round_trip(tmp_path, synthetic_data, fmt):
    if fmt == 'promptmm':  # pathlib paths, a folder still to be created.
        write_promptmm(synthetic_data, tmp_path / 'new')
        data = read_promptmm(tmp_path / 'new')
    else:
        write_mmrec(synthetic_data, str(tmp_path), 'synth')
        data = read_mmrec(str(tmp_path), 'synth')
    assert_same_data(synthetic_data, data)


def test_duplicates_are_merged_with_a_warning(tmp_path):
    write_json_splits(tmp_path, train={'0': [1, 1, 2], '1': [0]})
    with pytest.warns(UserWarning, match=r"train\.json.*merged 1 dup"):
        data = read_promptmm(str(tmp_path))
    assert split_edge_index(data, 'train').tolist() == [[0, 0, 1],
                                                        [1, 2, 0]]


def test_all_zero_feature_rows_are_kept_with_a_warning(tmp_path):
    write_json_splits(tmp_path, train={'0': [1], '1': [0]})
    image = np.ones((4, 3), np.float32)
    image[[1, 3]] = 0.
    np.save(tmp_path / 'image_feat.npy', image)
    with pytest.warns(UserWarning, match=r"image_feat\.npy.*'image'.*"
                      r"2 all-zero feature row"):
        data = read_promptmm(str(tmp_path))
    assert torch.equal(data['item'].image, torch.from_numpy(image))


def test_clean_data_gives_no_warning(tmp_path, synthetic_data):
    write_promptmm(synthetic_data, str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        read_promptmm(str(tmp_path))


# Bad input ####################################################################

GOOD_TRAIN = {'0': [0, 1], '1': [2]}
GOOD_VAL = {'0': [2]}
GOOD_TEST = {'1': [0]}


def json_text(path, text):
    path.write_text(text)


def break_json(name, obj):
    def mutate(root):
        (root / name).write_text(json.dumps(obj))
    return mutate


def save_feature(name, array, **kwargs):
    def mutate(root):
        np.save(root / f'{name}_feat.npy', array, **kwargs)
    return mutate


def with_nan():
    x = np.ones((3, 2), np.float32)
    x[2, 1] = np.nan
    return x


def with_inf():
    x = np.ones((3, 2), np.float32)
    x[1, 0] = -np.inf
    return x


BAD_PROMPTMM = {
    # id: (mutation of a good dataset, file, field, value in the message)
    'missing_train': (lambda r: (r / 'train.json').unlink(), 'train.json',
                      'train', 'missing file'),
    'missing_test': (lambda r: (r / 'test.json').unlink(), 'test.json',
                     'test', 'missing file'),
    'malformed_json': (lambda r: json_text(r / 'val.json',
                                           '{"0": [1, 2],\n "1": [3,}'),
                       'val.json', 'val', 'line 2'),
    'not_an_object': (break_json('train.json', [[0, 1]]), 'train.json',
                      'train', 'got a list'),
    'user_key_not_int': (break_json('train.json', {'abc': [0], '1': [2]}),
                         'train.json', 'user key', '"abc"'),
    'user_key_negative': (break_json('train.json', {'-1': [0], '1': [2]}),
                          'train.json', 'user key', '"-1" is a negative'),
    'user_key_float': (break_json('test.json', {'1.0': [0]}), 'test.json',
                       'user key', '"1.0"'),
    'item_float': (break_json('train.json', {'0': [0, 1.5], '1': [2]}),
                   'train.json', 'user "0"', '1.5 is not an integer'),
    'item_string': (break_json('val.json', {'0': ['3']}), 'val.json',
                    'user "0"', '"3" is not an integer'),
    'item_bool': (break_json('train.json', {'0': [True], '1': [2]}),
                  'train.json', 'user "0"', 'true is not an integer'),
    'item_negative': (break_json('train.json', {'0': [0], '1': [-4]}),
                      'train.json', 'user "1"', '-4 is a negative'),
    'item_too_big': (break_json('train.json', {'0': [0, 2**64], '1': [2]}),
                     'train.json', 'user "0"', f'{2**64} does not fit'),
    'user_key_twice': (lambda r: json_text(r / 'val.json',
                                           '{"0": [2], "1": [], "0": [1]}'),
                       'val.json', 'user key', '"0" appears more than once'),
    'items_not_a_list': (break_json('train.json', {'0': 5, '1': [2]}),
                         'train.json', 'user "0"', 'got 5'),
    'item_beyond_features': (break_json('test.json', {'1': [3]}),
                             'test.json', 'test', 'item id 3'),
    'feature_rows_disagree': (save_feature('text', np.ones((2, 4))),
                              'text_feat.npy', 'text', '2 feature rows'),
    'feature_nan': (save_feature('image', with_nan()), 'image_feat.npy',
                    'image', 'nan at row 2, column 1'),
    'feature_inf': (save_feature('image', with_inf()), 'image_feat.npy',
                    'image', '-inf at row 1, column 0'),
    'feature_1d': (save_feature('image', np.ones(3)), 'image_feat.npy',
                   'image', 'got shape [3]'),
    'feature_strings': (save_feature('image', np.array([['a']] * 3)),
                        'image_feat.npy', 'image', 'dtype <U1'),
    'feature_pickled_objects': (save_feature(
        'image', np.array([[{}]] * 3, dtype=object), allow_pickle=True),
        'image_feat.npy', 'image', 'cannot read'),
    'feature_file_corrupt': (lambda r: (r / 'image_feat.npy').write_bytes(
        b'not an npy file'), 'image_feat.npy', 'image', 'cannot read'),
    'modality_name': (save_feature('2d', np.ones((3, 2))), '2d_feat.npy',
                      'modality', "'2d'"),
    'train_empty': (break_json('train.json', {'0': [], '1': []}),
                    'train.json', 'train', 'no interactions'),
    'held_out_is_train': (break_json('val.json', {'0': [1]}), 'val.json',
                          'val', '(user 0, item 1)'),
}


@pytest.mark.parametrize('case', list(BAD_PROMPTMM))
def test_bad_promptmm_input(tmp_path, case):
    mutate, file, field, value = BAD_PROMPTMM[case]
    write_json_splits(tmp_path, GOOD_TRAIN, GOOD_VAL, GOOD_TEST)
    np.save(tmp_path / 'image_feat.npy', np.ones((3, 2), np.float32))
    mutate(tmp_path)
    with pytest.raises(DataFormatError) as info:
        read_promptmm(str(tmp_path))
    error, message = info.value, str(info.value)
    assert error.source.endswith(file), message
    assert error.field == field, message
    assert file in message and f"field '{field}'" in message
    assert value in message, message


def test_missing_folder(tmp_path):
    with pytest.raises(DataFormatError, match='does not exist'):
        read_promptmm(str(tmp_path / 'nope'))


GOOD_INTER = [(0, 0, 0), (0, 1, 0), (1, 2, 0), (0, 2, 1), (1, 0, 2)]

BAD_MMREC = {
    'missing_file': (lambda r: (r / 'toy.inter').unlink(), 'file',
                     'missing file'),
    'empty_file': (lambda r: (r / 'toy.inter').write_text(''), 'header',
                   'empty'),
    'missing_column': (lambda r: write_inter(r, 'toy', [(0, 0)],
                                             header='userID\titemID'),
                       'x_label', "missing column 'x_label'"),
    'user_not_int': (lambda r: write_inter(r, 'toy', GOOD_INTER + [
        ('abc', 1, 0)]), 'userID', "'abc' on line 7"),
    'item_float': (lambda r: write_inter(r, 'toy', [(0, 1.5, 0)] +
                                         GOOD_INTER), 'itemID',
                   "'1.5' on line 2"),
    'item_too_big': (lambda r: write_inter(r, 'toy', GOOD_INTER + [
        (0, 2**64, 0)]), 'itemID', f"'{2**64}' on line 7"),
    'item_negative': (lambda r: write_inter(r, 'toy', GOOD_INTER + [
        (1, -2, 0)]), 'itemID', 'negative id -2 on line 7'),
    'label_out_of_range': (lambda r: write_inter(r, 'toy', GOOD_INTER + [
        (1, 1, 3)]), 'x_label', 'value 3 on line 7'),
    'field_count': (lambda r: write_inter(r, 'toy', GOOD_INTER + [(1, 1)]),
                    'line 7', '2 tab-separated fields'),
    'item_beyond_features': (lambda r: write_inter(r, 'toy', GOOD_INTER + [
        (1, 5, 0)]), 'train', 'item id 5'),
    'held_out_is_train': (lambda r: write_inter(r, 'toy', GOOD_INTER + [
        (0, 0, 2)]), 'test', '(user 0, item 0)'),
}


@pytest.mark.parametrize('case', list(BAD_MMREC))
def test_bad_mmrec_input(tmp_path, case):
    mutate, field, value = BAD_MMREC[case]
    write_inter(tmp_path, 'toy', GOOD_INTER)
    np.save(tmp_path / 'image_feat.npy', np.ones((3, 2), np.float32))
    mutate(tmp_path)
    with pytest.raises(DataFormatError) as info:
        read_mmrec(str(tmp_path), 'toy')
    error, message = info.value, str(info.value)
    assert 'toy.inter' in error.source, message
    assert error.field == field, message
    assert value in message, message
