"""CSV streaming uploads."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import trinity_flight as tf


def write_csv(path: Path, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "id": np.arange(rows, dtype="int64"),
            "amount": rng.random(rows).round(6),
            "city": rng.choice(["Berlin", "Paris", "Lagos", "Lima"], rows),
            "flag": rng.random(rows) > 0.5,
        }
    )
    df.to_csv(path, index=False)
    return df


def test_csv_larger_than_one_block_streams(client: tf.Client, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.csv"
    df = write_csv(path, 200_000)
    size = path.stat().st_size
    block = 256 * 1024
    assert size > 10 * block

    # Count the batches that go on the wire: the CSV is sent block by block.
    import trinity_flight._client as impl

    seen = []
    real = impl._csv_batches

    def counting(reader):
        for b in real(reader):
            seen.append(b.num_rows)
            yield b

    monkeypatch.setattr(impl, "_csv_batches", counting)
    ticket = client.upload_csv(path, "csv-big", block_size=block)
    assert len(seen) >= size // block
    assert max(seen) < len(df)
    got = client.download_dataframe(ticket)
    assert len(got) == len(df)
    pd.testing.assert_frame_equal(got, df.astype({"city": "str"}))


def test_csv_from_file_object_and_gzip(client: tf.Client, tmp_path: Path) -> None:
    text = "a;b\n1;x\n2;y\n"
    t = client.upload_csv(io.BytesIO(text.encode()), "csv-obj", delimiter=";")
    assert client.download_table(t).to_pydict() == {"a": [1, 2], "b": ["x", "y"]}
    gz = tmp_path / "data.csv.gz"
    with gzip.open(gz, "wt") as f:
        f.write("a,b\n1,x\n2,y\n")
    t = client.upload_csv(gz, "csv-gz", column_types={"a": pa.int32()})
    got = client.download_table(t)
    assert got.schema.field("a").type == pa.int32()
    assert got.num_rows == 2


def test_csv_type_conflict_later_in_file_keeps_nothing(client: tf.Client, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    with open(path, "w") as f:
        f.write("n,s\n")
        for i in range(50_000):
            f.write(f"{i},row{i}\n")
        f.write("not-a-number,oops\n")
    before = client.upload_table(pa.table({"n": [1]}), "csv-bad")
    with pytest.raises(tf.InvalidRequest, match="cannot read the CSV"):
        client.upload_csv(path, "csv-bad", block_size=64 * 1024)
    # The partial upload was removed again: the latest version is still the one before.
    assert client.latest("csv-bad") == before
    # With explicit types the same file uploads.
    t = client.upload_csv(path, "csv-bad", column_types={"n": pa.string()}, block_size=64 * 1024)
    assert client.download_table(t).num_rows == 50_001


def test_module_level_upload_csv(flight_env, tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    df = write_csv(path, 100)
    t = tf.upload_csv(str(path), "csv-env", block_size=1024)
    assert len(tf.download_dataframe(t)) == len(df)
