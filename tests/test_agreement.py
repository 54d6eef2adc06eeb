"""Output agreement (θ*'s predictions compared across tasks) and candidate groupings drawn from it."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from affinity.agreement import output_agreement
from affinity.manifest import parse_manifest
from affinity.pipeline import run_job
from affinity.training import TensorData


class Fixed(nn.Module):
    """Outputs of 4 tasks: two copies of one direction (one scaled), its negation, a constant."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w))
        self.max_batch_rows = 7  # the rows go in several batches

    def forward(self, x):
        out = x @ self.w
        return torch.cat([out[:, :1], 3 * out[:, :1] + 1, -out[:, 1:2] + 0.1 * out[:, :1], torch.ones_like(out[:, :1])], 1)


def tensors(rows, tasks, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, 3, generator=g, dtype=torch.float64)
    train = torch.zeros(rows, tasks, dtype=torch.bool)
    val = torch.zeros_like(train)
    test = torch.zeros_like(train)
    train[: rows // 2, 0] = True
    val[rows // 2: rows - 5, 1] = True
    test[rows - 5:, :] = True  # the last 5 rows are test rows only: never read
    return TensorData(X, torch.zeros(rows, tasks, dtype=torch.float64), train, val,
                      torch.ones(tasks, dtype=torch.bool), test)


def test_output_agreement_is_the_correlation_of_outputs_over_training_and_validation_rows():
    data = tensors(40, 4)
    model = Fixed(torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    R = output_agreement(model, data)
    with torch.no_grad():
        O = model(data.X[:35]).numpy()
    expected = np.corrcoef(O[:, :3].T)
    assert np.allclose(R[:3, :3] + np.eye(3), expected)
    assert R[0, 1] > 0.999 and R[0, 2] < R[0, 1]
    assert np.all(R[3] == 0) and np.all(R[:, 3] == 0) and np.all(np.diag(R) == 0)  # a constant output agrees with none
    # test rows' inputs never enter: changing them changes nothing
    data.X[35:] = 100.0
    assert np.allclose(output_agreement(model, data), R)


def test_the_agreement_on_validation_rows_reads_no_row_a_task_trained_on():
    from affinity.agreement import MIN_UNFITTED_ROWS, agreement_rows

    data = tensors(140, 4)  # rows 0–69 train task 0, rows 70–134 validate task 1, 135–139 test
    model = Fixed(torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert agreement_rows(data, "fitted").tolist() == list(range(135))
    assert agreement_rows(data, "validation").tolist() == list(range(70, 135))
    R = output_agreement(model, data, rows="validation")
    with torch.no_grad():
        O = model(data.X[70:135]).numpy()
    assert np.allclose(R[:3, :3] + np.eye(3), np.corrcoef(O[:, :3].T))
    data.X[:70] = 100.0  # the training rows' inputs never enter
    assert np.allclose(output_agreement(model, data, rows="validation"), R)
    # a row that validates one task and trains another was fitted: with too few unfitted rows, every validation row
    data.train[70:, 2] = True
    data.train[130:, 2] = False
    assert int((data.val.any(1) & ~data.train.any(1)).sum()) < MIN_UNFITTED_ROWS
    assert agreement_rows(data, "validation").tolist() == list(range(70, 135))


def test_candidates_from_both_sources_recover_pooling_groups():
    # few labels per task, 3 planted groups sharing label directions: θ*'s predictions for a group's tasks move together
    raw = {"dataset": {"source": "synthetic",
                       "params": {"mechanism": "pooling", "tasks": 9, "groups": 3, "rows_per_task": 80, "seed": 2}},
           "estimation": {"num_subsets": 40}, "grouping": {"candidates_from": "both", "random_control": 2}}
    result = run_job(parse_manifest(raw))
    advice = result.advice
    index = {t: g for g, members in enumerate(result.data.truth_groups) for t in members}
    truth = [index[t] for t in result.data.task_names]

    def ari(c):
        label = {t: g for g, members in enumerate(c["groups"]) for t in members}
        return adjusted_rand_score(truth, [label[t] for t in result.data.task_names])

    assert advice["candidates_from"] == ["affinity", "outputs"]
    by_source = {}
    for c in advice["candidates"]:
        by_source.setdefault(c["source"], []).append(c)
    # one model for all and one per task are no source's; every other candidate names its own
    assert [c["k"] for c in by_source[None]] == [1, 9]
    assert {c["k"] for c in by_source["outputs"]} <= {c["k"] for c in by_source["affinity"]}
    # the outputs' grouping at the planted k is the planted grouping (the affinity's is a candidate too, unless equal)
    at_3 = [c for c in advice["candidates"] if c["k"] == 3]
    assert max(ari(c) for c in at_3) == 1.0
    outputs_3 = [c for c in at_3 if c["source"] == "outputs"]
    assert not outputs_3 or ari(outputs_3[0]) == 1.0
    # no two candidates at one k are the same partition
    for k in {c["k"] for c in advice["candidates"]}:
        parts = [frozenset(frozenset(g) for g in c["groups"]) for c in advice["candidates"] if c["k"] == k]
        assert len(parts) == len(set(parts))
    # the choice keeps every planted group whole and says where it came from
    chosen = result.grouping.labels
    for members in result.data.truth_groups:
        assert len({chosen[result.data.task_names.index(t)] for t in members}) == 1
    if 1 < result.grouping.k < 9:
        assert advice["chosen_from"] in ("affinity", "outputs")
        if advice["chosen_from"] == "outputs":  # their stability: θ* retrained from other seeds
            assert advice["reliability"]["stability"]["of"] == "base model retrained from other seeds"


def test_the_output_agreements_groups_are_checked_against_base_models_from_other_seeds():
    # pooling groups with enough rows: θ* from any seed reads the same 3 groups, and the verdict says so (k fixed at
    # the planted 3: the agreement's grouping at 3 is the one checked)
    raw = {"dataset": {"source": "synthetic",
                       "params": {"mechanism": "pooling", "tasks": 9, "groups": 3, "rows_per_task": 80, "seed": 2}},
           "estimation": {"num_subsets": 40},
           "grouping": {"candidates_from": "outputs", "k": 3, "random_control": 0}}
    result = run_job(parse_manifest(raw))
    advice = result.advice
    assert advice["chosen_from"] == "outputs" and result.grouping.k == 3
    stable = advice["reliability"]["stability"]
    assert stable["resamples"] == 2 and stable["mean_ari"] == stable["min_ari"] == 1.0
    assert "3 groups of the base model's output agreement, stable when the base model is retrained" in advice["verdict"]
    assert advice["recommendation"] == "groups" and not advice["verdict"].startswith("no reliable structure")


def test_agreement_stability_is_the_ari_of_the_retrained_models_groups():
    from affinity.manifest import GroupingSpec
    from affinity.reliability import agreement_stability

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 4)  # 12 tasks, 3 groups of 4
    base = rng.normal(size=(200, 3))
    same = base[:, labels] + 0.1 * rng.normal(size=(200, 12))  # another θ* that reads the same groups
    noise = rng.normal(size=(200, 12))  # one that reads none
    spec = GroupingSpec()
    assert agreement_stability(labels, [same, same], spec)["mean_ari"] == 1.0
    mixed = agreement_stability(labels, [same, noise], spec)
    assert mixed["min_ari"] < 0.5 and mixed["mean_ari"] < 0.8 and mixed["resamples"] == 2
    assert agreement_stability(labels, [], spec) is None  # nothing retrained: not measured
    assert agreement_stability(np.zeros(12, dtype=int), [same], spec) is None  # one group: nothing to be stable


def test_verdict_on_the_output_agreements_groups_follows_the_retrained_models():
    from affinity.reliability import verdict

    # T's split-half reliability says nothing about the agreement's groups: only their stability decides
    rec, text = verdict(3, 9, 0.05, {"spearman_brown": 0.0}, {"mean_ari": 0.95}, source="outputs")
    assert rec == "groups" and text.startswith("3 groups of the base model's output agreement, stable when the base "
                                               "model is retrained from other seeds (ARI 0.95)")
    rec, text = verdict(3, 9, 0.05, {"spearman_brown": 0.9}, {"mean_ari": 0.3}, source="outputs")
    assert rec == "groups" and text.startswith("no reliable structure: 3 groups of the base model's output agreement "
                                               "(retrained ARI 0.30)") and text.endswith("is not stable")
    rec, text = verdict(3, 9, 0.05, {"spearman_brown": 0.9}, None, source="outputs")
    assert text.startswith("no reliable structure") and "not stable" in text


def test_retrained_predictions_are_other_seeds_base_models():
    from affinity.agreement import RESEEDS, predictions, retrained_predictions
    from affinity.pipeline import prepare
    from affinity.progress import Progress

    raw = {"dataset": {"source": "synthetic",
                       "params": {"mechanism": "pooling", "tasks": 6, "groups": 2, "rows_per_task": 40, "seed": 1}},
           "training": {"epochs": 5}}
    manifest = parse_manifest(raw)
    prep = prepare(manifest, Progress())
    first = retrained_predictions(prep.data, prep.tensors, manifest)
    again = retrained_predictions(prep.data, prep.tensors, manifest)
    own = predictions(prep.model, prep.tensors)
    assert len(first) == len(RESEEDS) and all(P.shape == own.shape for P in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # seeded: the same models each time
    assert not np.allclose(first[0], own) and not np.allclose(first[0], first[1])  # other seeds, other models


def _small_pooling(**grouping):
    from affinity.pipeline import prepare
    from affinity.progress import Progress

    raw = {"dataset": {"source": "synthetic",
                       "params": {"mechanism": "pooling", "tasks": 6, "groups": 2, "rows_per_task": 40, "seed": 1}},
           "training": {"epochs": 5}, "grouping": {"folds": 3, **grouping}}
    manifest = parse_manifest(raw)
    return manifest, prepare(manifest, Progress())


def test_fold_predictions_never_read_the_labels_of_their_fold():
    from affinity.agreement import fold_predictions, predictions
    from affinity.group_check import cv_folds

    manifest, prep = _small_pooling()
    first = fold_predictions(prep.data, prep.tensors, manifest)
    assert len(first) == 3 and all(P.shape == predictions(prep.model, prep.tensors).shape for P in first)
    # flip every label of fold 0's rows: the model without fold 0 is unchanged, the others are not
    score = cv_folds(prep.tensors, 3, manifest.grouping.seed, manifest.grouping.check_stop)[0].test
    flipped = TensorData(prep.tensors.X, torch.where(score, 1.0 - prep.tensors.Y, prep.tensors.Y), prep.tensors.train,
                         prep.tensors.val, prep.tensors.binary, prep.tensors.test)
    again = fold_predictions(prep.data, flipped, manifest)
    assert np.array_equal(first[0], again[0])
    assert not np.allclose(first[1], again[1]) and not np.allclose(first[2], again[2])


def test_agreement_fold_scores_score_each_fold_with_that_folds_groups():
    from affinity.advice import agreement_fold_scores, candidate_groupings
    from affinity.agreement import correlation, predictions
    from affinity.group_check import check_groupings

    manifest, prep = _small_pooling(candidates_from="outputs")
    n = prep.data.n_tasks
    P = predictions(prep.model, prep.tensors)
    groupings, _ = candidate_groupings(correlation(P), manifest.grouping, specific=False)
    partitions = {k: [list(m) for m in g.groups] for k, g in groupings.items()}
    plain = check_groupings(prep.data, prep.tensors, manifest, partitions)
    # every fold's θ* reads the full θ*'s groups: the cross-fitted scores are the plain check's
    same, record = agreement_fold_scores(prep.data, prep.tensors, manifest, partitions, groupings, "outputs", [P] * 3)
    assert set(same) == set(plain)
    for k in plain:
        assert np.allclose(same[k].loss, plain[k].loss, equal_nan=True)
    assert record["folds"] == 3 and all(v == 1.0 for v in record["fold_ari"].values())
    # fold 1's θ* pairs other tasks: fold 1 is scored with its groups, folds 0 and 2 as before
    rng = np.random.default_rng(0)
    other = P[:, rng.permutation(n)] + 0.01 * rng.normal(size=P.shape)
    mixed, record = agreement_fold_scores(prep.data, prep.tensors, manifest, partitions, groupings, "outputs",
                                          [P, other, P])
    inner = [k for k in groupings if 1 < k < n]
    own = {k: [list(m) for m in groupings[k].groups] for k in inner}
    from affinity.reliability import cluster_at
    fold1 = {("f1", k): [list(m) for m in cluster_at(correlation(other), k, manifest.grouping).groups] for k in inner}
    direct = check_groupings(prep.data, prep.tensors, manifest, fold1, folds={key: [1] for key in fold1})
    for k in inner:
        assert np.allclose(mixed[k].loss[[0, 2]], plain[k].loss[[0, 2]], equal_nan=True)
        assert np.allclose(mixed[k].loss[1], direct[("f1", k)].loss[1], equal_nan=True)
        if fold1[("f1", k)] != own[k]:
            assert record["fold_ari"][str(k)] < 1.0


def test_the_job_checks_the_agreement_on_folds_its_groups_did_not_see():
    raw = {"dataset": {"source": "synthetic",
                       "params": {"mechanism": "pooling", "tasks": 6, "groups": 2, "rows_per_task": 40, "seed": 1}},
           "training": {"epochs": 5}, "estimation": {"num_subsets": 30},
           "grouping": {"folds": 3, "agreement_crossfit": "all", "random_control": 2}}
    advice = run_job(parse_manifest(raw)).advice
    check = advice["agreement_check"]
    assert check["folds"] == 3
    outputs = {str(c["k"]) for c in advice["candidates"] if c["source"] == "outputs"}
    assert outputs and outputs <= set(check["fold_ari"])
    off = run_job(parse_manifest({**raw, "grouping": {**raw["grouping"], "agreement_crossfit": "off"}})).advice
    assert off["agreement_check"] is None


def test_the_random_control_of_an_agreement_split_reads_folds_its_groups_did_not_see():
    # planted pooling groups, k fixed at their 3: the agreement's split, against random partitions of its sizes, is
    # scored fold by fold with the groups of θ* retrained without that fold; the planted groups come back there too
    raw = {"dataset": {"source": "synthetic",
                       "params": {"mechanism": "pooling", "tasks": 9, "groups": 3, "rows_per_task": 80, "seed": 2}},
           "estimation": {"num_subsets": 40},
           "grouping": {"candidates_from": "outputs", "k": 3, "random_control": 3, "agreement_crossfit": "control",
                        "folds": 5}}
    result = run_job(parse_manifest(raw))
    advice = result.advice
    assert advice["chosen_from"] == "outputs" and result.grouping.k == 3
    check = advice["agreement_check"]
    assert check["mode"] == "control" and check["folds"] == 5 and set(check["fold_ari"]) == {"3"}
    assert check["fold_ari"]["3"] == 1.0  # every fold's θ* reads the planted groups
    control = advice["random_control"]
    assert control["partitions"] == 3 and len(control["fold_gains"]) == 5
    # the candidates' own scores are the plain check's, and with every fold's groups the recommended ones the
    # control's too: with the mode off the same numbers
    off = run_job(parse_manifest({**raw, "grouping": {**raw["grouping"], "agreement_crossfit": "off"}})).advice
    assert off["agreement_check"] is None
    assert [c["predicted_val_loss"] for c in off["candidates"]] == [c["predicted_val_loss"] for c in advice["candidates"]]
    assert off["random_control"]["gain_over_random"] == pytest.approx(control["gain_over_random"])


def test_agreement_crossfit_takes_its_modes_and_a_switch():
    from affinity.manifest import ManifestError

    def mode(v):
        return parse_manifest({"dataset": {"source": "planted"}, "grouping": {"agreement_crossfit": v}}).grouping.agreement_crossfit

    assert [mode(v) for v in ("off", "control", "all", True, False)] == ["off", "control", "all", "all", "off"]
    with pytest.raises(ManifestError, match="grouping.agreement_crossfit"):
        mode("yes")


def _outputs(seed, rows=300):
    """Predictions of 7 tasks: 0–2 one latent direction, 3–4 another, 5–6 pure noise (their pairing is luck)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, 2))
    shared = [z[:, 0], z[:, 0], z[:, 0], z[:, 1], z[:, 1]]
    cols = [s + 0.3 * rng.normal(size=rows) for s in shared] + [rng.normal(size=rows) for _ in range(2)]
    return np.stack(cols, 1)


def test_consensus_candidates_are_the_meet_of_every_base_models_groups():
    from affinity.advice import candidate_groupings, consensus_groupings
    from affinity.agreement import correlation
    from affinity.manifest import GroupingSpec

    spec = GroupingSpec(k="auto")
    outputs = [_outputs(s) for s in (0, 1, 2)]
    meets = consensus_groupings(outputs, spec)
    per_model = [candidate_groupings(correlation(O), spec, specific=False)[0] for O in outputs]
    n = 7
    assert 1 in meets and n in meets
    for size, g in meets.items():
        if not 1 < size < n:
            continue
        labels = np.asarray(g.labels)
        # the meet at some candidate k: two tasks together exactly where every model's groups at k put them together
        ks = [k for k in per_model[0] if 1 < k < n]
        assert any(all((labels[i] == labels[j]) == all(np.asarray(m[k].labels)[i] == np.asarray(m[k].labels)[j]
                                                        for m in per_model)
                       for i in range(n) for j in range(n)) for k in ks)
        assert g.k == size == len(g.groups)
        # the two latent directions never share a group
        for members in g.groups:
            assert not (set(members) & {0, 1, 2} and set(members) & {3, 4})
    # the two latent groups survive whole at their k
    assert any(sorted(map(sorted, g.groups))[:2] == [[0, 1, 2], [3, 4]] for g in meets.values())


def test_mean_consensus_clusters_the_averaged_agreement_and_outvotes_one_models_luck():
    from affinity.advice import agreement_candidates, candidate_groupings
    from affinity.agreement import correlation
    from affinity.manifest import GroupingSpec

    spec = GroupingSpec(k="auto", agreement_consensus="mean")
    outputs = [_outputs(s) for s in (0, 1, 2)]
    # θ*'s predictions: tasks 3–4 read as unrelated and 5–6 as a pair (one initialization's luck)
    rng = np.random.default_rng(9)
    lucky = outputs[0].copy()
    lucky[:, 4] = rng.normal(size=len(lucky))
    lucky[:, 6] = lucky[:, 5] + 0.3 * rng.normal(size=len(lucky))
    got, criterion = agreement_candidates(lucky, lambda: outputs[1:], spec)
    averaged = np.mean([correlation(O) for O in [lucky, *outputs[1:]]], axis=0)
    want, want_criterion = candidate_groupings(averaged, spec, specific=False)
    assert criterion == want_criterion
    assert {k: g.groups for k, g in got.items()} == {k: g.groups for k, g in want.items()}
    # θ*'s agreement alone pairs 5 with 6 at k = 3; the average of three models keeps 3–4 and leaves 5–6 apart
    alone = candidate_groupings(correlation(lucky), spec, specific=False)[0]
    assert any({5, 6} <= set(m) for m in alone[3].groups)
    assert sorted(map(sorted, got[3].groups))[:2] == [[0, 1, 2], [3, 4]]
    # without retrained models the mode falls back to θ*'s agreement
    off = agreement_candidates(lucky, None, spec)[0]
    assert {k: g.groups for k, g in off.items()} == {k: g.groups for k, g in alone.items()}


def test_the_job_takes_the_agreements_consensus():
    raw = {"dataset": {"source": "synthetic",
                       "params": {"mechanism": "pooling", "tasks": 9, "groups": 3, "rows_per_task": 80, "seed": 2}},
           "estimation": {"num_subsets": 40},
           "grouping": {"candidates_from": "outputs", "agreement_consensus": True, "random_control": 2}}
    result = run_job(parse_manifest(raw))
    outputs = [c for c in result.advice["candidates"] if c["source"] == "outputs"]
    assert outputs and all(c["k"] == len(c["groups"]) for c in outputs)
    # the planted groups carry across initializations: the consensus keeps them whole
    truth = {frozenset(g) for g in result.data.truth_groups}
    assert any({frozenset(g) for g in c["groups"]} == truth for c in outputs)


def test_agreement_consensus_takes_its_modes_and_a_switch():
    from affinity.manifest import GroupingSpec, ManifestError

    assert GroupingSpec().agreement_consensus == "off"
    assert GroupingSpec(agreement_consensus=True).agreement_consensus == "meet"
    assert GroupingSpec(agreement_consensus=False).agreement_consensus == "off"
    assert GroupingSpec(agreement_consensus="mean").agreement_consensus == "mean"
    with pytest.raises(ManifestError, match="grouping.agreement_consensus"):
        parse_manifest({"dataset": "planted", "grouping": {"agreement_consensus": "median"}})


def test_the_agreement_candidates_of_each_consensus_mode():
    from affinity.advice import agreement_candidates, candidate_groupings, consensus_groupings
    from affinity.agreement import correlation
    from affinity.manifest import GroupingSpec

    outputs = [_outputs(s) for s in (0, 1, 2)]
    calls = []

    def retrained():
        calls.append(1)
        return outputs[1:]

    def labels(cands):
        return {k: tuple(np.asarray(g.labels).tolist()) for k, g in cands.items()}

    off = agreement_candidates(outputs[0], retrained, GroupingSpec(k="auto"))
    assert labels(off[0]) == labels(candidate_groupings(correlation(outputs[0]), GroupingSpec(k="auto"),
                                                        specific=False)[0]) and not calls  # θ* alone, none retrained
    meet = agreement_candidates(outputs[0], retrained, GroupingSpec(k="auto", agreement_consensus="meet"))
    assert labels(meet[0]) == labels(consensus_groupings(outputs, GroupingSpec(k="auto"))) and meet[1] is None
    spec = GroupingSpec(k="auto", agreement_consensus="mean")
    mean = agreement_candidates(outputs[0], retrained, spec)
    averaged = np.mean([correlation(O) for O in outputs], axis=0)
    assert labels(mean[0]) == labels(candidate_groupings(averaged, spec, specific=False)[0])
    assert len(calls) == 2
    assert any(sorted(map(sorted, g.groups))[:2] == [[0, 1, 2], [3, 4]] for g in mean[0].values())
