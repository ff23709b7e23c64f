import os

from services.core.versions import folder_stamp


def test_a_folder_stamp_changes_with_a_file_added_grown_or_touched_and_not_otherwise(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"half")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    first = folder_stamp(tmp_path)
    assert [name for name, _, _ in first] == ["model.onnx", "sub/a.txt"]  # files only, sorted, nested ones too
    assert folder_stamp(tmp_path) == first
    (tmp_path / "model.onnx").write_bytes(b"half and the rest")
    grown = folder_stamp(tmp_path)
    assert grown != first
    (tmp_path / "item_vocabulary.txt").write_text("I1\n")
    added = folder_stamp(tmp_path)
    assert added != grown and len(added) == 3
    stat = (tmp_path / "sub" / "a.txt").stat()
    os.utime(tmp_path / "sub" / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert folder_stamp(tmp_path) != added


def test_a_missing_folder_has_an_empty_stamp(tmp_path):
    assert folder_stamp(tmp_path / "not-there") == ()
