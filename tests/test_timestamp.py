"""Tests for utils/timestamp.py: unique run folder names."""
import re

from utils.timestamp import make_run_dir


def test_run_dirs_are_unique_within_one_second(tmp_path):
    output_dir = tmp_path / "runs" / "nested"
    made = [make_run_dir(output_dir) for _ in range(20)]
    assert len(set(made)) == 20
    assert all(path.is_dir() and path.parent == output_dir for path in made)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", made[0].name)
    assert len(list(output_dir.iterdir())) == 20
