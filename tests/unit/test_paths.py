from __future__ import annotations

from services.core.paths import file_in_the_way


def test_the_file_in_the_way_of_a_folder_is_found_at_the_path_or_above_it(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert file_in_the_way(afile) == afile
    assert file_in_the_way(afile / "deeper" / "still") == afile
    assert file_in_the_way(tmp_path / "new" / "folder") is None  # can be made
    assert file_in_the_way(tmp_path) is None
