"""RegDB trials: the --trial values, preparing several trials in one command, and the errors that stop it
before any work (exit 2 for a trial outside 1..10, exit 3 for a missing index file or a bad line in one)."""

from __future__ import annotations

import pytest

from pfanet_cli.cli import main
from pfanet_cli.data.prepared import open_prepared
from pfanet_cli.data.regdb import parse_trials
from pfanet_cli.errors import UsageError
from tests.helpers import error_line, make_regdb_tree


def test_trial_values():
    assert parse_trials("all") == list(range(1, 11))
    assert parse_trials("3") == [3] and parse_trials(" 2, 5 ") == [2, 5] and parse_trials(7) == [7]
    for value, message in (("11", "RegDB trial ids are 1..10, got 11"), ("0", "got 0"), ("1,x", "--trial must be"),
                           ("", "--trial must be"), ("2,2", "names a trial twice")):
        with pytest.raises(UsageError, match=message):
            parse_trials(value)


def test_prepare_several_trials_in_one_command(tmp_path, capsys):
    raw = tmp_path / "RegDB"
    for trial in (1, 2):
        make_regdb_tree(raw, ids=4, per_modality=2, trial=trial)
    code = main(["prepare-data", "regdb", str(raw), "--trial", "1,2", "--out", str(tmp_path / "prep"),
                 "--height", "32", "--width", "16", "--workers", "1"])
    assert code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("prepared regdb into") == 2
    for trial in (1, 2):
        data = open_prepared(tmp_path / "prep" / f"trial{trial}")
        assert data.dataset == "regdb" and data.manifest["settings"]["trial"] == trial
        assert len(data.split("test")) == 8


def test_trial_all_checks_every_trial_before_decoding(tmp_path, capsys):
    raw = make_regdb_tree(tmp_path / "RegDB", ids=4, per_modality=2, trial=1)
    code = main(["prepare-data", "regdb", str(raw), "--trial", "all", "--out", str(tmp_path / "prep"),
                 "--height", "32", "--width", "16"])
    assert code == 3
    assert "train_visible_2.txt (trial 2); nothing was prepared" in error_line(capsys)
    assert not (tmp_path / "prep").exists()


def test_a_trial_outside_one_to_ten_is_a_usage_error(tmp_path, capsys):
    raw = make_regdb_tree(tmp_path / "RegDB", ids=4, per_modality=2, trial=1)
    assert main(["prepare-data", "regdb", str(raw), "--trial", "11"]) == 2
    assert "RegDB trial ids are 1..10, got 11" in error_line(capsys)


def prepare_trial_1(raw, out, *extra) -> int:
    return main(["prepare-data", "regdb", str(raw), "--trial", "1", "--out", str(out), "--height", "32",
                 "--width", "16", "--workers", "1", *extra])


def test_index_lines_that_name_no_image_stop_it_or_are_skipped(tmp_path, capsys):
    raw = make_regdb_tree(tmp_path / "RegDB", ids=4, per_modality=2, trial=1)
    index = raw / "idx" / "train_thermal_1.txt"
    missing = index.read_text().splitlines()[1].split()[0]
    (raw / missing).unlink()
    assert prepare_trial_1(raw, tmp_path / "prep") == 3
    assert f"train_thermal_1.txt:2: image {missing} does not exist (pass --skip-bad" in error_line(capsys)
    assert not (tmp_path / "prep").exists()
    assert prepare_trial_1(raw, tmp_path / "prep", "--skip-bad") == 0
    assert missing not in open_prepared(tmp_path / "prep").split("train").paths


@pytest.mark.parametrize("line,message", [
    ("Thermal/1/a.bmp", "train_thermal_1.txt:4: expected '<relative path> <label>', got 'Thermal/1/a.bmp'"),
    ("Thermal/x/a.bmp 0", "train_thermal_1.txt:4: cannot read the person id from 'Thermal/x/a.bmp'"),
])
def test_a_malformed_index_line_is_named_with_its_place(tmp_path, capsys, line, message):
    raw = make_regdb_tree(tmp_path / "RegDB", ids=4, per_modality=2, trial=1)
    index = raw / "idx" / "train_thermal_1.txt"
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:2] + ["", line] + lines[2:]) + "\n")  # a blank line 3 is skipped
    assert prepare_trial_1(raw, tmp_path / "prep") == 3
    assert message in error_line(capsys)
