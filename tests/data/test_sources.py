"""Sources: record order, splits, skips with reasons, the builtin corpus's exclusions."""

from __future__ import annotations

import json
import sys

import pytest

from lsa_ds.data import sources as S
from lsa_ds.errors import UserError
from lsa_ds.recipe.schema import SourceConfig


def records(src):
    return list(S.iter_records(src))


def test_jsonl_skips_are_counted_with_reasons(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"text": "hello"}\n{bad json\n{"body": "x"}\n\n{"text": "  "}\n{"text": 3}\n'
                  b'{"text": "caf\xff"}\n{"text": "world"}\n')
    recs = [r for _, r in records(SourceConfig(name="j", type="jsonl", path=str(f)))]
    assert [r.text for r in recs if r.text] == ["hello", "world"]
    reasons = {r.key: r.skip for r in recs if r.skip}
    assert reasons["d.jsonl:2"].startswith("malformed JSON")
    assert reasons["d.jsonl:3"] == "missing field 'text'"
    assert reasons["d.jsonl:5"] == "empty"
    assert reasons["d.jsonl:6"].startswith("text is int")
    assert reasons["d.jsonl:7"].startswith("undecodable bytes")
    assert "d.jsonl:4" not in reasons  # a blank line is not a record


def test_txt_glob_one_document_per_file(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    recs = [r for _, r in records(SourceConfig(name="t", type="txt", path=str(tmp_path / "*.txt")))]
    assert [(r.key, r.text) for r in recs] == [("a.txt", "first"), ("b.txt", "second"), ("bad.txt", None)]
    assert recs[2].skip.startswith("undecodable bytes")


def test_parquet_and_hf_sources(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["p1", "p2", ""]}), tmp_path / "x.parquet")
    got = [r.text for _, r in records(SourceConfig(name="p", type="parquet", path=str(tmp_path / "*.parquet"), text_field="content"))]
    assert got == ["p1", "p2", None]
    with pytest.raises(UserError, match="no column 'text'"):
        records(SourceConfig(name="p", type="parquet", path=str(tmp_path / "x.parquet")))

    datasets.Dataset.from_dict({"text": ["h1", "h2"]}).save_to_disk(str(tmp_path / "saved"))
    assert [r.text for _, r in records(SourceConfig(name="h", type="hf", path=str(tmp_path / "saved")))] == ["h1", "h2"]
    (tmp_path / "f.json").write_text("\n".join(json.dumps({"text": t}) for t in ["j1", "j2"]))
    src = SourceConfig(name="h", type="hf", path=str(tmp_path / "f.json"), format="json")
    assert [r.text for _, r in records(src)] == ["j1", "j2"]


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="matches no files"):
        records(SourceConfig(name="j", type="jsonl", path=str(tmp_path / "nope.jsonl")))


def test_split_is_a_stable_hash_of_the_key():
    keys = [f"doc{i}" for i in range(4000)]
    splits = [S.split_of(k, 0.1) for k in keys]
    assert 0.08 < splits.count("eval") / len(keys) < 0.12
    assert splits == [S.split_of(k, 0.1) for k in keys]
    assert S.split_of("doc0", 0.0) == "train"


def test_stdlib_excludes_site_packages(tmp_path, monkeypatch):
    for rel in ["os.py", "json/__init__.py", "site-packages/pkg/mod.py", "dist-packages/x.py", "test/t.py"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"# {rel}\n")
    monkeypatch.setattr(S, "stdlib_root", lambda: tmp_path)
    src = SourceConfig(name="s", type="stdlib", exclude=["test/*"])
    assert [rel for rel, _ in S.stdlib_files(src)] == ["json/__init__.py", "os.py"]
    keys = [r.key for _, r in records(src)]
    assert keys[:2] == ["json/__init__.py", "os.py"]
    assert any(k.startswith("pydoc_data.topics/") for k in keys)


def test_stdlib_fingerprint_has_python_version_and_default_holdout():
    fp = S.source_fingerprint(SourceConfig(name="s", type="stdlib", max_documents=5))
    assert fp["python"] == sys.version and fp["holdout"] == S.STDLIB_HOLDOUT


def test_real_stdlib_has_heldout_documents_and_no_site_packages():
    src = SourceConfig(name="s", type="stdlib")
    files = S.stdlib_files(src)
    assert len(files) > 500 and not any("site-packages" in rel for rel, _ in files)
    splits = [S.split_of(rel, S.STDLIB_HOLDOUT) for rel, _ in files]
    assert 0 < splits.count("eval") < len(files) // 5
