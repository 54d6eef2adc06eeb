"""The outcome suite's candidate scores and its replay of a choice rule (benchmarks/outcome.py --replay)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from affinity.choice import choose_k_from
from affinity.manifest import GroupingSpec, parse_manifest
from affinity.outcome import evaluate, held_out

ROOT = Path(__file__).resolve().parents[1]


def _suite():
    return _script("outcome", "outcome_suite")


def _script(name: str, as_name: str | None = None):
    spec = importlib.util.spec_from_file_location(as_name or name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_choose_k_from_recorded_numbers():
    totals = {1: 10.0, 2: 9.6, 4: 9.55, 8: 10.2}
    steady = {1: [0.0] * 5, 2: [0.04, 0.035, 0.045, 0.04, 0.04], 4: [0.05, 0.04, 0.045, 0.04, 0.05], 8: [-0.02] * 5}
    # 4 groups is best, 2 within tolerance 1% of the reference: the fewest groups
    assert choose_k_from(totals, 10.0, steady, GroupingSpec(tolerance=0.01)) == 2
    assert choose_k_from(totals, 10.0, steady, GroupingSpec(tolerance=0.0)) == 4
    # a gain below min_gain, or one fold's luck: together
    assert choose_k_from(totals, 10.0, steady, GroupingSpec(min_gain=0.05)) == 1
    # a split that one fold's luck carries is not eligible: the best eligible split, or together if none is
    lucky = {**steady, 4: [0.2, -0.02, -0.01, -0.01, 0.065]}
    assert choose_k_from(totals, 10.0, lucky, GroupingSpec(tolerance=0.0, min_gain_se=2.0)) == 2
    assert choose_k_from({1: 10.0, 4: 9.55}, 10.0, lucky, GroupingSpec(tolerance=0.0, min_gain_se=2.0)) == 1
    assert choose_k_from(totals, 10.0, lucky, GroupingSpec(tolerance=0.0, min_gain_se=0.0)) == 4
    # the fewest groups within tolerance are taken among eligible splits only: a lucky 2 does not
    # displace a steady 4
    lucky_two = {**steady, 2: [0.2, -0.02, -0.01, -0.01, 0.04]}
    assert choose_k_from(totals, 10.0, lucky_two, GroupingSpec(tolerance=0.01, min_gain_se=2.0)) == 4
    # one model for all not a candidate (a fixed k range): the best split stands
    assert choose_k_from({2: 9.6, 4: 9.55}, 10.0, steady, GroupingSpec(min_gain=0.5, tolerance=0.0)) == 4


def test_one_model_per_task_against_min_gain_alone():
    # 6 tasks: one model per task predicted 1% better than one model for all, its folds noisy
    totals = {1: 10.0, 3: 9.9, 6: 9.9}
    folds = {1: [0.0] * 4, 3: [0.01] * 4, 6: [0.05, -0.03, 0.04, -0.02]}
    # held to min_gain (1.5%) and its standard error like any split: together
    assert choose_k_from(totals, 10.0, folds, GroupingSpec(min_gain_alone=None), n=6) == 1
    # held to min_gain_alone (the default, 0.5%) and min_gain_alone_se (the default, 1): 1% over folds from −3% to
    # +5% is 0.49 standard errors, short of the 1.19 that 1 reads as over 4 folds (and of min_gain_se's 0.55): together
    assert choose_k_from(totals, 10.0, folds, GroupingSpec(), n=6) == 1
    assert choose_k_from(totals, 10.0, folds, GroupingSpec(min_gain_alone_se=None), n=6) == 1
    # min_gain_alone_se 0: the mean above min_gain_alone decides: separately
    assert choose_k_from(totals, 10.0, folds, GroupingSpec(min_gain_alone_se=0), n=6) == 6
    # the same 1% over steadier folds, 1.10 standard errors: clears min_gain_se's bar (0.55), not the default's (1.19)
    steady = {**folds, 6: [0.03, -0.01, 0.02, 0.0]}
    assert choose_k_from(totals, 10.0, steady, GroupingSpec(min_gain_alone_se=None), n=6) == 6
    assert choose_k_from(totals, 10.0, steady, GroupingSpec(), n=6) == 1
    # steadier still (1.73 standard errors): separately; a split of 3 with the same gain is still held to min_gain
    steady = {**folds, 6: [0.02, 0.0, 0.02, 0.0]}
    assert choose_k_from(totals, 10.0, steady, GroupingSpec(), n=6) == 6
    assert choose_k_from({1: 10.0, 3: 9.9}, 10.0, steady, GroupingSpec(min_gain_alone=0.005), n=6) == 1
    # not above min_gain_alone: together
    assert choose_k_from(totals, 10.0, steady, GroupingSpec(min_gain_alone=0.02), n=6) == 1
    # without n the rule cannot tell one model per task: every split is held to min_gain
    assert choose_k_from(totals, 10.0, steady, GroupingSpec(min_gain_alone=0.005)) == 1
    # a split that pays and one model per task within tolerance of it: the fewest groups (without the bar a split
    # must clear over one model per task)
    folds = {**folds, 6: [0.05, -0.01, 0.06, 0.03]}
    assert choose_k_from({1: 10.0, 3: 9.7, 6: 9.68}, 10.0, {**folds, 3: [0.03] * 4},
                         GroupingSpec(min_gain_alone=0.005, split_vs_alone_se=0.0), n=6) == 3
    # with it (the default, 2 standard errors) and the split of the output agreement: the split's folds beat one
    # model per task's on average (−3 to +4 pp over 4 folds): one model per task
    assert choose_k_from({1: 10.0, 3: 9.7, 6: 9.68}, 10.0, {**folds, 3: [0.03] * 4},
                         GroupingSpec(min_gain_alone=0.005), n=6, outputs={3}) == 6
    assert choose_k_from({1: 10.0, 3: 9.7, 6: 9.68}, 10.0, {**folds, 3: [0.03] * 4},
                         GroupingSpec(min_gain_alone=0.005), n=6) == 3  # T's split: not held to it


def test_a_gain_of_one_model_per_task_that_the_folds_noise_makes_does_not_displace_a_split():
    """The text job's seed 2 (3 folds): one model per task predicted +3.2% from folds of +9.4, −9.9 and +13.0%
    (0.45 standard errors); the output agreement's 4 groups +14.2% over it, ahead on every fold, but short of
    split_vs_alone_se's 2 standard errors (4.53 over 3 folds). Held to min_gain_se as well, one model per task is
    not eligible, so the split stands (it measured +19.2% on the test rows, one model per task −5.3%)."""
    totals = {1: 10.0, 4: 8.6, 11: 9.68}
    folds = {1: [0.0] * 3, 4: [0.22, 0.05, 0.15], 11: [0.094, -0.099, 0.13]}
    assert choose_k_from(totals, 10.0, folds, GroupingSpec(), n=11, outputs={4}) == 4
    # steady folds of one model per task: eligible, and the split does not beat it by the bar
    steady = {**folds, 11: [0.04, 0.02, 0.036]}
    assert choose_k_from(totals, 10.0, steady, GroupingSpec(), n=11, outputs={4}) == 11


def test_replay_overrules_a_choice_that_loses_on_the_folds_it_was_not_made_on():
    """The replay re-runs the selection check from the recorded per-fold gains: a split that one fold carries is
    chosen on every three folds that include it and gains nothing on the fold left out, so it gives way to one
    model for all (one model per task does not pay)."""
    suite = _suite()

    def cand(k, total, gains, test, source="affinity"):
        return {"k": k, "source": source, "predicted_val_loss": total, "fold_gains": gains, "test_loss": test}

    row = {"dataset": "unrelated", "seed": 0, "n_tasks": 4, "k": 2, "test_loss": 10.4, "one_model_for_all": 10.0,
           "one_model_per_task": 10.6, "planted": None, "random_median": None, "percentile": None,
           "candidates": [cand(1, 10.0, [0.0] * 4, 10.0, None), cand(2, 9.5, [0.2, 0.0, 0.0, 0.0], 10.4),
                          cand(4, 10.5, [-0.05] * 4, 10.6, None)]}
    assert choose_k_from({1: 10.0, 2: 9.5, 4: 10.5}, 10.0, {1: [0.0] * 4, 2: [0.2, 0, 0, 0], 4: [-0.05] * 4},
                         GroupingSpec(), n=4) == 2  # the choice alone: the split
    out = suite.replayed(row, GroupingSpec())
    assert out["k"] == 1 and out["recommendation"] == "together" and out["test_loss"] == 10.0
    assert suite.replayed(row, GroupingSpec(), selection=False)["k"] == 2  # --replay-without-selection
    # steady folds: the split stands
    row["candidates"][1]["fold_gains"] = [0.06, 0.04, 0.05, 0.05]
    assert suite.replayed(row, GroupingSpec())["k"] == 2
    # ... unless the selection's gain (5% here) must exceed grouping.selection_min_gain
    assert suite.replayed(row, GroupingSpec(selection_min_gain=0.04))["k"] == 2
    assert suite.replayed(row, GroupingSpec(selection_min_gain=0.06))["k"] == 1


def test_candidates_scored_on_test_rows_and_replayed(tmp_path):
    m = parse_manifest({"dataset": {"source": "synthetic", "params": {"mechanism": "pooling", "tasks": 6, "groups": 2,
                                                                        "rows_per_task": 40, "seed": 0}},
                        "estimation": {"num_subsets": 30}, "training": {"epochs": 20},
                        "grouping": {"candidates": 2, "min_gain_se": 0, "min_gain_alone": None}})
    report = evaluate(m, tmp_path, random_seeds=2, score_candidates=True)
    s = report["summary"]["scratch"]
    suite = _suite()
    cands = suite.keyed(s["candidates"])  # k, or (k, "outputs") beside the affinity's grouping at k
    assert {1, 6} <= set(cands) and len(cands) >= 3
    assert {c["source"] for c in s["candidates"] if c["k"] not in (1, 6)} <= {"affinity", "outputs"}
    # the trivial candidates are the baselines' own trainings; the chosen one is the recommendation's
    assert cands[1]["test_loss"] == pytest.approx(s["one_model_for_all"])
    assert cands[6]["test_loss"] == pytest.approx(s["one_model_per_task"])
    assert any(c["test_loss"] == pytest.approx(s["test_loss"]) for c in s["candidates"] if c["k"] == s["k"])
    # each training's summed test loss beside their mean (one training here), and the check's seed spread
    assert all(c["seed_test_losses"] == [pytest.approx(c["test_loss"])] for c in s["candidates"])
    assert all(c["seed_sd"] >= 0 for c in s["candidates"])  # 3 trainings per check fold (the default)
    row = {"dataset": "pooling", "seed": 0, "n_tasks": 6, **s}
    same = suite.replayed(row, GroupingSpec(min_gain_se=0, min_gain_alone=None))
    assert same["k"] == s["k"] and same["test_loss"] == pytest.approx(s["test_loss"])
    together = suite.replayed(row, GroupingSpec(min_gain=0.9, min_gain_alone=None))
    assert together["k"] == 1 and together["recommendation"] == "together"
    assert together["test_loss"] == pytest.approx(s["one_model_for_all"]) and together["measured_gain"] == 0
    crit = suite.criteria([row])
    assert crit["best_candidate_regret"]["pooling_0"] <= 0


def test_recorded_candidates_rechecked_under_other_settings(tmp_path, monkeypatch):
    """--recheck: the recorded candidates checked again (same rows, the run's recorded settings) with other check
    settings on top, k re-chosen by that check, test losses the recorded ones, the per-fold scores saved."""
    m = parse_manifest({"dataset": {"source": "synthetic", "params": {"mechanism": "pooling", "tasks": 6, "groups": 2,
                                                                        "rows_per_task": 40, "seed": 0}},
                        "estimation": {"num_subsets": 30}, "training": {"epochs": 20}, "grouping": {"candidates": 2}})
    report = evaluate(m, tmp_path / "pooling_0", random_seeds=2, score_candidates=True)
    s = report["summary"]["scratch"]
    row = {"dataset": "pooling", "seed": 0, "n_tasks": 6, **s}
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    suite = _suite()
    # the run's own manifest (evaluation.json's; the suite's pooling set is larger), --set's settings on top
    out = suite.rechecked(row, [tmp_path], {"grouping": {"folds": 4, "check_stop": "fold"}}, tmp_path / "saved")
    cands = suite.keyed(out["candidates"])
    assert set(cands) == set(suite.keyed(s["candidates"]))
    assert all(len(c["fold_gains"]) == 4 for c in cands.values())
    assert cands[1]["fold_gains"] == [0.0] * 4
    # the test losses are the recorded ones; the row is the one its re-chosen k gives
    assert out["test_loss"] == pytest.approx(cands[out["k"]]["test_loss"])
    recorded = {k: c["test_loss"] for k, c in suite.keyed(s["candidates"]).items()}
    assert all(cands[k]["test_loss"] == recorded[k] for k in cands)
    saved = np.load(tmp_path / "saved" / "pooling_0_scores.npz")
    assert saved["loss_1"].shape == (4, 6)


def test_recorded_advice_rescored_on_more_test_rows(tmp_path, monkeypatch):
    """--rescore: the recorded advice, candidates and baselines trained again on the run's own rows and scored on
    more test rows, under the settings recorded in the run's evaluation.json (this manifest is not the suite's
    "pooling"); with the run's own test rows it reproduces the recorded row; --set's settings go on top."""
    def manifest(test_rows):
        return parse_manifest({"dataset": {"source": "synthetic", "params": {
            "mechanism": "pooling", "tasks": 6, "groups": 2, "rows_per_task": 40, "seed": 0,
            "test_rows_per_task": test_rows}}, "estimation": {"num_subsets": 30}, "training": {"epochs": 20},
            "grouping": {"candidates": 2, "min_gain_se": 0, "min_gain_alone": None}})

    report = evaluate(manifest(10), tmp_path / "pooling_0", random_seeds=2, score_candidates=True)
    s = report["summary"]["scratch"]
    row = {"dataset": "pooling", "seed": 0, "n_tasks": 6, "extra_test_rows": 10, **s}
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    suite = _suite()
    assert report["manifest"] == held_out(manifest(10)).model_dump(mode="json")
    same = suite.rescored(row, [tmp_path], 10, 2, 1, tmp_path / "same")
    for key in ("k", "test_loss", "one_model_for_all", "one_model_per_task", "random_median", "percentile"):
        assert same[key] == pytest.approx(s[key]), key
    assert [c["test_loss"] for c in same["candidates"]] == pytest.approx([c["test_loss"] for c in s["candidates"]])
    more = suite.rescored(row, [tmp_path], 60, 2, 1, tmp_path / "more")
    assert more["k"] == s["k"] and more["extra_test_rows"] == 60
    assert more["one_model_for_all"] != pytest.approx(s["one_model_for_all"])
    rescored = json.loads((tmp_path / "more" / "pooling_0" / "evaluation.json").read_text())
    recorded = report["groupings"]["one_model_for_all"]
    # the same models (the run's training and validation rows), scored on more test rows
    assert rescored["groupings"]["one_model_for_all"]["sum_val_loss"] == pytest.approx(recorded["sum_val_loss"])
    assert suite.replayed(more, GroupingSpec(min_gain_se=0, min_gain_alone=None))["k"] == s["k"]
    assert rescored["manifest"]["dataset"]["params"]["test_rows_per_task"] == 60
    with pytest.raises(SystemExit, match="does not draw test rows apart"):
        suite.rescored(row, [tmp_path], 0, 2, 1, tmp_path / "none")
    shorter = suite.rescored(row, [tmp_path], 10, 2, 1, tmp_path / "shorter", {"training": {"epochs": 2}})
    trained = json.loads((tmp_path / "shorter" / "pooling_0" / "evaluation.json").read_text())
    assert trained["manifest"]["training"]["epochs"] == 2
    assert shorter["one_model_for_all"] != pytest.approx(s["one_model_for_all"])
    # another training seed (benchmarks/training_noise.py reads the runs side by side): the same candidates, other
    # test losses
    suite.rescored(row, [tmp_path], 10, 2, 1, tmp_path / "reseeded", {"training": {"seed": 7}})
    reseeded = json.loads((tmp_path / "reseeded" / "pooling_0" / "evaluation.json").read_text())
    noise = _script("training_noise")
    first, second = noise.measured_gains(rescored), noise.measured_gains(reseeded)
    assert set(first) == set(second) and first[1] == second[1] == 0 and "planted" in first
    assert noise.advised_key(reseeded) in first and reseeded["manifest"]["training"]["seed"] == 7
    assert any(first[k] != pytest.approx(second[k]) for k in first if k != 1)


def test_suite_scores_generated_datasets_on_extra_test_rows():
    """--test-rows adds test rows where the source generates them (planted, synthetic), not to digits or yeast."""
    suite = _suite()
    for name in ("planted", "pooling", "shared_rows"):
        m = suite.manifest_for(name, 3, {}, 200)
        assert m.dataset.params["test_rows_per_task"] == 200 and m.dataset.params["seed"] == 3
        assert "test_rows_per_task" not in (suite.manifest_for(name, 3, {}).dataset.params or {})
    for name in ("digits", "yeast"):
        assert "test_rows_per_task" not in (suite.manifest_for(name, 3, {}, 200).dataset.params or {})


def test_candidates_of_two_sources_at_one_k():
    from affinity.advice import add_source
    from affinity.choice import choose_k_from, size_of
    from solver.grouping import Grouping

    spec = GroupingSpec(min_gain_se=0.0, min_gain_alone=None)
    # two groupings at k = 3: the lower total wins among as many groups; fewest groups within the tolerance first
    totals = {1: 10.0, 3: 9.5, (3, "outputs"): 9.0, 4: 9.5, 6: 9.9}
    per_fold = {k: [0.05, 0.05] for k in totals}
    assert choose_k_from(totals, 10.0, per_fold, spec, n=6) == (3, "outputs")
    totals[4] = 8.98
    assert choose_k_from(totals, 10.0, per_fold, spec, n=6) == (3, "outputs")  # within 0.5% of 8.98: fewer groups
    totals[4] = 8.0
    assert choose_k_from(totals, 10.0, per_fold, spec, n=6) == 4
    assert size_of((3, "outputs")) == 3 and size_of(4) == 4

    def grouping(labels):
        return Grouping.from_labels(np.zeros((len(labels), len(labels))), np.asarray(labels), method="test",
                                    relaxation_objective=None, seconds=0.0)

    first = {1: grouping([0] * 4), 2: grouping([0, 0, 1, 1]), 4: grouping([0, 1, 2, 3])}
    more = {1: grouping([0] * 4), 2: grouping([1, 1, 0, 0]), 3: grouping([0, 0, 1, 2]), 4: grouping([3, 2, 1, 0])}
    merged = add_source(first, more, "outputs", 4)
    # the same partition (relabelled) is not added twice; k = 1 and k = n are shared
    assert list(merged) == [1, 2, (3, "outputs"), 4]
