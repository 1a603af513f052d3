import numpy as np
import pytest

from keras_llmopt import reference
from keras_llmopt._src.reference import corpus as corpus_lib

pytestmark = pytest.mark.backend_agnostic


def _write_tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_stdlib_corpus_is_deterministic_and_cached(tiny_corpus):
    again = reference.load_corpus(tiny_corpus.sequence_length)
    np.testing.assert_array_equal(again.train, tiny_corpus.train)
    np.testing.assert_array_equal(again.validation, tiny_corpus.validation)
    assert tiny_corpus.train.dtype == np.uint8
    assert tiny_corpus.train.shape[1] == tiny_corpus.sequence_length + 1
    assert again.num_files == tiny_corpus.num_files


def test_split_is_by_file_about_five_percent_and_disjoint():
    root = reference.default_corpus_dir()
    files = corpus_lib.list_source_files(root)
    assert files == sorted(files)
    assert not any(
        part in ("test", "tests", "site-packages") for f in files for part in f.split("/")
    )
    validation = {f for f in files if corpus_lib.is_validation_file(f)}
    train = set(files) - validation
    assert validation and train and not (validation & train)
    assert 0.02 < len(validation) / len(files) < 0.09
    # The split depends only on the path, not on the run or on the other files.
    assert {f for f in files[::-1] if corpus_lib.is_validation_file(f)} == validation


def test_train_and_validation_texts_do_not_overlap(tiny_corpus):
    width = tiny_corpus.sequence_length + 1
    train_rows = {bytes(r) for r in tiny_corpus.train[:: max(1, len(tiny_corpus.train) // 4000)]}
    overlap = sum(bytes(r) in train_rows for r in tiny_corpus.validation)
    # Boilerplate lines may repeat across files, whole aligned windows essentially never.
    assert overlap <= len(tiny_corpus.validation) // 100
    assert tiny_corpus.validation.shape[1] == width


def test_windows_follow_sequence_length(tmp_path):
    _write_tree(tmp_path, {f"pkg/m{i}.py": "x = 1\n" * 200 for i in range(60)})
    corpus = reference.load_corpus(16, corpus_dir=tmp_path)
    assert corpus.train.shape[1] == 17 and corpus.validation.shape[1] == 17
    assert corpus.source == str(tmp_path)
    assert sum(corpus.num_files) == 60


def test_custom_folder_excludes_test_folders(tmp_path):
    _write_tree(tmp_path, {"a.py": "a" * 5000, "tests/t.py": "t" * 5000, "test/u.py": "u" * 5000})
    assert corpus_lib.list_source_files(tmp_path) == ["a.py"]


def test_missing_sources_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus_dir"):
        reference.load_corpus(16, corpus_dir=tmp_path)


def test_bad_sequence_length():
    with pytest.raises(ValueError, match="sequence_length=0"):
        reference.load_corpus(0)


def test_make_batches_is_deterministic(tiny_corpus):
    x1, y1 = reference.make_batches(tiny_corpus.train, batch_size=4, steps=3, seed=7)
    x2, _ = reference.make_batches(tiny_corpus.train, batch_size=4, steps=3, seed=7)
    x3, _ = reference.make_batches(tiny_corpus.train, batch_size=4, steps=3, seed=8)
    np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (12, tiny_corpus.sequence_length) and x1.dtype == np.int32
    np.testing.assert_array_equal(x1[:, 1:], y1[:, :-1])


def test_spread_windows_samples_the_whole_split_evenly():
    windows = np.arange(20, dtype="uint8").reshape(10, 2)
    picked = corpus_lib.spread_windows(windows, 3)
    assert picked.dtype == np.int32 and picked[:, 0].tolist() == [0, 8, 18]
    assert len(corpus_lib.spread_windows(windows, 50)) == 10  # never more than there are
