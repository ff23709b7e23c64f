from __future__ import annotations

import os
import stat

from services.core.paths import file_in_the_way, share_like_a_plain_write, staging_folder


def test_the_file_in_the_way_of_a_folder_is_found_at_the_path_or_above_it(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert file_in_the_way(afile) == afile
    assert file_in_the_way(afile / "deeper" / "still") == afile
    assert file_in_the_way(tmp_path / "new" / "folder") is None  # can be made
    assert file_in_the_way(tmp_path) is None


def test_staging_folders_and_files_get_the_permissions_of_a_plain_write_by_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        folder = staging_folder(tmp_path, ".staging-")
        afile = folder / "f"
        afile.write_text("x")
        afile.chmod(0o600)
        share_like_a_plain_write(afile)
    finally:
        os.umask(previous)
    assert folder.parent == tmp_path and folder.name.startswith(".staging-")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE(afile.stat().st_mode) == 0o640
