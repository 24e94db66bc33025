"""RegDB over several trials: `pfanet evaluate --all-trials` with one features file per trial (the mean ±
std computed from the per-trial JSONs), its errors, and `pfanet regdb-all` end to end on two tiny trials."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pfanet_cli.cli import main
from pfanet_cli.data.prepare import prepare_regdb_trials
from pfanet_cli.evaluation.features import save_features
from pfanet_cli.evaluation.protocols import METRIC_KEYS
from tests.helpers import CONTRACT, error_line, make_regdb_tree


def regdb_features(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(1, 11), 6)
    camids = np.tile(np.repeat([1, 2], 3), 10)
    feats = rng.standard_normal((10, 8))[pids - 1] + 1.2 * rng.standard_normal((60, 8))
    paths = [f"{'Visible' if c == 1 else 'Thermal'}/{p}/{i}.bmp" for i, (p, c) in enumerate(zip(pids, camids))]
    return save_features(path, feats.astype(np.float32), pids, camids, paths, dataset="regdb")


def assert_mean_and_std_of_the_trial_files(aggregate: list[dict], trial_files: list[Path]):
    trials = [json.loads(path.read_text()) for path in trial_files]
    for index, result in enumerate(aggregate):
        rows = [trial[index] for trial in trials]
        assert {r["mode"] for r in rows} == {result["mode"]}
        assert result["trials"] == len(rows) and result["per_trial"] == [r["metrics"] for r in rows]
        for key in METRIC_KEYS:
            values = np.array([r["metrics"][key] for r in rows])
            assert result["metrics"][key] == pytest.approx(values.mean(), abs=1e-12)
            assert result["std"][key] == pytest.approx(values.std(), abs=1e-12)


def test_all_trials_from_features_files(tmp_path, capsys):
    for trial, seed in ((1, 3), (2, 4)):
        regdb_features(tmp_path / f"trial{trial}.npz", seed)
    out = tmp_path / "regdb.json"
    code = main(["evaluate", "--dataset", "regdb", "--all-trials", "--trial", "1,2", "--features",
                 str(tmp_path / "trial{trial}.npz"), "--json", str(out)])
    assert code == 0
    stdout = " ".join(capsys.readouterr().out.split())
    aggregate = json.loads(out.read_text())
    assert [r["mode"] for r in aggregate] == ["v2t", "t2v"]
    assert all(list(r) == CONTRACT + ["card"] for r in aggregate)
    assert_mean_and_std_of_the_trial_files(aggregate, [tmp_path / "regdb_trial1.json", tmp_path / "regdb_trial2.json"])
    card = aggregate[0]["card"]
    assert card["trials"] == 2 and card["split"].startswith("RegDB trials 1, 2 of 10")
    assert card["features_file"] == {"trial 1": str(tmp_path / "trial1.npz"), "trial 2": str(tmp_path / "trial2.npz")}
    assert json.loads((tmp_path / "regdb_trial2.json").read_text())[0]["card"]["split"].startswith("RegDB trial 2:")
    assert "per trial" in stdout and "mean ± std over trials" in stdout and "protocol card" in stdout
    assert (tmp_path / "regdb_cmc.png").is_file()


@pytest.mark.parametrize("args,code,message", [
    (["--features", "feats.npz"], 2, "must contain {trial}"),
    (["--features", "missing{trial}.npz"], 3, "features file of RegDB trial 1 not found"),
    (["--trial", "0,1", "--features", "f{trial}.npz"], 2, "RegDB trial ids are 1..10, got 0"),
    (["--dataset", "sysu", "--features", "f{trial}.npz"], 2, "--all-trials is RegDB's"),
    ([], 2, "--all-trials needs the features of each trial"),
])
def test_all_trials_errors(tmp_path, capsys, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--all-trials", *args]) == code
    assert message in error_line(capsys)


def test_all_trials_checks_and_follows_direction(tmp_path, capsys):
    """--direction with --all-trials was neither checked nor used: 'sideways' exited 0 with both directions."""
    for trial, seed in ((1, 3), (2, 4)):
        regdb_features(tmp_path / f"trial{trial}.npz", seed)
    template = str(tmp_path / "trial{trial}.npz")
    assert main(["evaluate", "--dataset", "regdb", "--all-trials", "--trial", "1,2", "--features", template,
                 "--direction", "sideways", "--json", str(tmp_path / "bad.json")]) == 2
    assert "unknown RegDB direction 'sideways': choose one of v2t, t2v, both" in error_line(capsys)
    assert not (tmp_path / "bad.json").exists()
    out = tmp_path / "t2v.json"
    assert main(["evaluate", "--dataset", "regdb", "--all-trials", "--trial", "1,2", "--features", template,
                 "--direction", "t2v", "--json", str(out)]) == 0
    aggregate = json.loads(out.read_text())
    assert [r["mode"] for r in aggregate] == ["t2v"]
    both = tmp_path / "both.json"
    assert main(["evaluate", "--dataset", "regdb", "--all-trials", "--trial", "1,2", "--features", template,
                 "--json", str(both)]) == 0
    assert json.loads(both.read_text())[1]["metrics"] == aggregate[0]["metrics"]
    assert_mean_and_std_of_the_trial_files(aggregate, [tmp_path / "t2v_trial1.json", tmp_path / "t2v_trial2.json"])


def test_rerank_parameters_out_of_range_exit_2(tmp_path, capsys):
    path = regdb_features(tmp_path / "f.npz", 1)
    for args, message in ((["--rerank", "kreciprocal", "--k1", "0"], "--k1 must be at least 1"),
                          (["--rerank", "kreciprocal", "--lambda", "2"], "--lambda must be in [0, 1]"),
                          (["--k2", "3"], "apply to --rerank kreciprocal")):
        assert main(["evaluate", "--features", str(path), *args]) == 2
        assert message in error_line(capsys)
    assert main(["evaluate", "--features", str(path), "--rerank", "kreciprocal", "--k1", "4", "--k2", "2",
                 "--json", str(tmp_path / "r.json")]) == 0
    card = json.loads((tmp_path / "r.json").read_text())["card"]
    assert card["rerank"] == {"method": "k-reciprocal (Zhong et al. 2017)", "k1": 4, "k2": 2, "lambda": 0.3}


@pytest.mark.slow
def test_regdb_all_trains_two_trials_resumes_and_reports_their_mean(tmp_path, capsys):
    raw = tmp_path / "RegDB"
    for trial in (1, 2):
        make_regdb_tree(raw, ids=6, per_modality=3, trial=trial, seed=trial)
    prepare_regdb_trials(raw, tmp_path / "prep", [1, 2], height=64, width=32, workers=1)
    args = ["regdb-all", "tiny_cpu.yaml", "data.dataset=regdb", "--trial", "1,2", "--data", str(tmp_path / "prep"),
            "--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(args) == 0
    runs = tmp_path / "runs"
    trial_files = [runs / f"trial{t}" / "results.json" for t in (1, 2)]
    aggregate = json.loads((runs / "results.json").read_text())
    assert_mean_and_std_of_the_trial_files(aggregate, trial_files)
    checkpoint = json.loads(trial_files[0].read_text())[0]["card"]["checkpoint"]
    assert checkpoint["path"] == str(runs / "trial1" / "joint" / "checkpoints" / "last.pt")
    assert checkpoint["chosen"].startswith("last")
    assert set(aggregate[1]["card"]["checkpoint"]) == {"trial 1", "trial 2"}
    capsys.readouterr()
    # resumable per trial: a finished trial is kept, a trial without results is evaluated again
    stamp = trial_files[0].stat().st_mtime_ns
    trial_files[1].unlink()
    assert main(args) == 0
    assert "RegDB trial 1: finished earlier" in " ".join(capsys.readouterr().out.split())
    assert trial_files[0].stat().st_mtime_ns == stamp and trial_files[1].is_file()
    assert json.loads((runs / "results.json").read_text()) == aggregate      # same models, same numbers
    assert main(["evaluate", "--dataset", "regdb", "--all-trials", "--trial", "1,2", "--features",
                 str(runs / "trial{trial}" / "features.npz"), "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert [r["metrics"] for r in again] == [r["metrics"] for r in aggregate]


@pytest.mark.slow
def test_regdb_all_trains_agw_recipes_with_train_agw(tmp_path):
    """An AGW recipe (model.method=agw) trains each trial with train-agw, no GAN stage, into trial<T>/agw. Without
    non-local blocks: two iterations from scratch leave eval-mode activations far too large, and the non-local
    products (cubic in them) overflow (tests/engine/test_train_agw.py says more)."""
    raw = tmp_path / "RegDB"
    make_regdb_tree(raw, ids=6, per_modality=3, trial=1)
    prepare_regdb_trials(raw, tmp_path / "prep", [1], height=64, width=32, workers=1)
    assert main(["regdb-all", "demo_agw.yaml", "data.dataset=regdb", "agw.epochs=1", "agw.iterations_per_epoch=2",
                 "agw.ids_per_batch=2", "agw.images_per_id=2", "model.non_local=off", "--trial", "1",
                 "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "runs"), "--device", "cpu"]) == 0
    trial = tmp_path / "runs" / "trial1"
    assert sorted(p.name for p in trial.iterdir()) == ["agw", "features.npz", "results.json"]
    card = json.loads((trial / "results.json").read_text())[0]["card"]
    assert card["method"].startswith("AGW") and card["checkpoint"]["stage"] == "train-agw"
