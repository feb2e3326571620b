import os

from vllm_fleet import manifest


def _model(tmp_path):
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.safetensors").write_bytes(b"\0" * 1000)
    (root / ".cache").mkdir()
    (root / ".cache" / "lock").write_text("hub bookkeeping")
    return root


def test_build_lists_every_file_with_sha256_and_skips_hub_cache(tmp_path):
    root = _model(tmp_path)
    m = manifest.build(str(root), "controller:/x")
    assert sorted(m["files"]) == ["config.json", "sub/weights.safetensors"]
    assert m["files"]["config.json"]["sha256"] == manifest.sha256_file(str(root / "config.json"))
    assert m["source"] == "controller:/x"


def test_an_untouched_model_verifies_clean_without_rehashing(tmp_path):
    root = _model(tmp_path)
    m = manifest.build(str(root), "s")
    result = manifest.verify(str(root), m)
    assert manifest.is_clean(result) and result["rehashed"] == 0
    assert manifest.verify(str(root), m, full=True)["rehashed"] == 2


def test_same_size_corruption_is_caught_once_mtime_moves(tmp_path):
    root = _model(tmp_path)
    m = manifest.build(str(root), "s")
    path = root / "sub" / "weights.safetensors"
    path.write_bytes(b"\1" * 1000)
    result = manifest.verify(str(root), m)
    assert result["modified"] == ["sub/weights.safetensors"]


def test_same_size_corruption_with_restored_mtime_needs_full(tmp_path):
    root = _model(tmp_path)
    m = manifest.build(str(root), "s")
    path = root / "config.json"
    st = os.stat(path)
    path.write_text('{"a": 2}')
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert manifest.is_clean(manifest.verify(str(root), m))
    assert manifest.verify(str(root), m, full=True)["modified"] == ["config.json"]


def test_missing_and_unexpected_files_are_reported(tmp_path):
    root = _model(tmp_path)
    m = manifest.build(str(root), "s")
    (root / "config.json").unlink()
    (root / "extra.bin").write_bytes(b"x")
    result = manifest.verify(str(root), m)
    assert result["missing"] == ["config.json"]
    assert result["unexpected"] == ["extra.bin"]
    assert not manifest.is_clean(result)


def test_dump_round_trips(tmp_path):
    root = _model(tmp_path)
    m = manifest.build(str(root), "s")
    target = tmp_path / "m.json"
    target.write_text(manifest.dump(m))
    assert manifest.load(str(target)) == m
