import json

import pytest

from modelpress.data import political_speeches, read_text_file, rotten_tomatoes, split_dataset
from modelpress.data.datasets import TextDataset
from modelpress.errors import DataError


def test_rotten_tomatoes_split_is_fixed_and_disjoint():
    a, b = rotten_tomatoes(seed=0), rotten_tomatoes(seed=0)
    assert a.fingerprint() == b.fingerprint()
    # 12,808 labelled snippets less 56 exact duplicates
    assert (len(a.train), len(a.validation), len(a.test)) == (9564, 1275, 1913)
    assert a.train.label_names == ("rotten", "fresh")
    assert sum(a.train.labels) + sum(a.validation.labels) + sum(a.test.labels) == 7368
    assert not set(a.test.texts) & (set(a.validation.texts) | set(a.train.texts))
    assert rotten_tomatoes(seed=1).fingerprint() != a.fingerprint()


def test_political_speeches():
    text = political_speeches()
    assert len(text) > 500_000 and "America" in text


def test_user_files(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n"good, fine",pos\nbad,neg\nokay,pos\n')
    ds = read_text_file(csv_path, need_labels=True)
    assert (
        ds.texts == ["good, fine", "bad", "okay"]
        and ds.label_names == ("neg", "pos")
        and ds.labels == [1, 0, 1]
    )
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 3}) for i in range(9)))
    ds = read_text_file(jl, need_labels=True)
    assert ds.labels[:4] == [0, 1, 2, 0] and ds.label_names == ("0", "1", "2")
    assert read_text_file(jl, need_labels=False).labels is None


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("a,b\n1,2\n", ".csv", "needs a 'text' column"),
        ("text\nhello\nworld\n", ".csv", "needs a 'label' column"),
        ('{"text": "x", "label": 1}\n{"text": "y", "label": 1}\n', ".jsonl", "two distinct labels"),
        ('{"text": "x"\n', ".jsonl", "cannot read"),
        ("", ".csv", "holds no examples"),
        ("text,label\n", ".parquet", "unsupported data file type"),
    ],
)
def test_bad_user_files(tmp_path, content, suffix, message):
    p = tmp_path / f"bad{suffix}"
    p.write_text(content)
    with pytest.raises(DataError, match=message):
        read_text_file(p, need_labels=True)


def test_unreadable_binary_file(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(DataError, match="cannot read"):
        read_text_file(p, need_labels=True)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_text_file(tmp_path / "nope.csv", need_labels=False)


def test_split_needs_data():
    with pytest.raises(DataError, match="at least 10"):
        split_dataset(TextDataset(["a"] * 3, [0, 1, 0]))
