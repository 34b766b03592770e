from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tlpipe.compute.archives import load_model
from tlpipe.core.arrays import (
    array_writer,
    load_array,
    open_rows,
    read_rows,
    row_appender,
    save_array,
)
from tlpipe.core.jsonfiles import load_json, save_json
from tlpipe.core.runtime import UserError

REPO = Path(__file__).resolve().parents[1]


def test_array_round_trip_is_exact(tmp_path):
    array = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)
    save_array(tmp_path / "a.npy", array)
    loaded = load_array(tmp_path / "a.npy")
    assert loaded.dtype == np.float32 and np.array_equal(loaded, array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]  # no temporary left behind


def test_streamed_array_equals_the_in_memory_array(tmp_path):
    array = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    with array_writer(tmp_path / "s.npy", array.shape, np.float32) as out:
        for start in range(0, 7, 3):
            out[start : start + 3] = array[start : start + 3]
    assert np.array_equal(np.load(tmp_path / "s.npy", allow_pickle=False), array)


def test_interrupted_stream_leaves_no_final_file_and_no_temporary(tmp_path):
    with (
        pytest.raises(RuntimeError),
        array_writer(tmp_path / "s.npy", (10, 2), np.float32) as out,
    ):
        out[:5] = 1.0
        raise RuntimeError("killed half way")
    assert list(tmp_path.iterdir()) == []


def test_pickled_arrays_are_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match=r"objects.npy is corrupt or truncated"):
        load_array(tmp_path / "objects.npy", mmap=False)


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_arrays_are_detected(tmp_path, mmap):
    save_array(tmp_path / "t.npy", np.ones((100, 10), dtype=np.float32))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"t\.npy .*(corrupt or truncated|cannot be read)"):
        load_array(tmp_path / "t.npy", mmap=mmap)


def test_missing_inputs_say_how_to_create_them(tmp_path):
    with pytest.raises(UserError, match="missing: run `dvc repro`"):
        load_array(tmp_path / "nothing.npy")
    with pytest.raises(UserError, match="missing: run `dvc repro`"):
        load_json(tmp_path / "nothing.json")


def test_json_round_trip(tmp_path):
    save_json(tmp_path / "m.json", {"b": 1, "a": [1.5, "x"]})
    assert load_json(tmp_path / "m.json") == {"a": [1.5, "x"], "b": 1}


SAVE_A_MODEL = (
    "\n"
    "import sys, keras\n"
    "from tlpipe.core.runtime import seed_everything\n"
    "from tlpipe.compute.archives import save_model\n"
    "seed_everything(0)\n"
    "save_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), "
    "keras.layers.Dense(3)]), sys.argv[1])\n"
)


def test_saving_the_same_model_in_two_processes_gives_the_same_bytes(tmp_path):
    # Keras writes the save time and Python object ids into .keras files; DVC would see a new model.
    for name in ("a.keras", "b.keras"):
        subprocess.run(
            [sys.executable, "-c", SAVE_A_MODEL, str(tmp_path / name)],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        time.sleep(1.1)  # Keras stamps the save time with a one-second resolution
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    reloaded = load_model(tmp_path / "b.keras")
    assert [w.shape for w in reloaded.get_weights()] == [(4, 8), (8,), (8, 3), (3,)]


def test_saved_models_keep_keras_uncompressed_entries(tmp_path):
    # Re-deflating the weights to rewrite the archive cost ~3 s per VGG16-sized save.
    import zipfile

    import keras

    from tlpipe.compute.archives import save_model

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.save(tmp_path / "plain.keras")
    save_model(model, tmp_path / "ours.keras")
    with (
        zipfile.ZipFile(tmp_path / "plain.keras") as plain,
        zipfile.ZipFile(tmp_path / "ours.keras") as ours,
    ):
        assert {i.filename: i.compress_type for i in ours.infolist()} == {
            i.filename: i.compress_type for i in plain.infolist()
        }
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in ours.infolist())


def test_appended_rows_make_one_npy_whatever_the_count(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (n, 5, 4, 3), dtype=np.uint8) for n in (3, 0, 7, 1)]
    with row_appender(tmp_path / "a.npy", (5, 4, 3)) as append:
        for part in parts:
            append(part)
        assert not (tmp_path / "a.npy").exists()  # appears only once complete
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.concatenate(parts))
    with row_appender(tmp_path / "empty.npy", (2,), np.float16):
        pass
    assert np.load(tmp_path / "empty.npy").shape == (0, 2)
    with pytest.raises(RuntimeError), row_appender(tmp_path / "b.npy", (2,)) as append:
        append(np.zeros((1, 2), np.uint8))
        raise RuntimeError("interrupted")
    assert list(tmp_path.glob("*b*")) == []


def test_rows_read_from_disk_equal_the_array(tmp_path):
    array = np.random.default_rng(0).normal(size=(40, 3, 2)).astype(np.float16)
    np.save(tmp_path / "a.npy", array)
    rows = open_rows(tmp_path / "a.npy")
    assert len(rows) == 40 and rows.shape == (40, 3, 2) and rows.dtype == np.float16
    for wanted in ([0], [39], [1, 2, 3, 10, 11, 30], list(range(40)), []):
        np.testing.assert_array_equal(read_rows(rows, np.array(wanted, int)), array[wanted])
