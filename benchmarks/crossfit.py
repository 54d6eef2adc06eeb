"""The cross-fitted check against the plain one, on an outcome run's recorded candidates.

The advice builds its candidate groupings from an affinity estimated on the training and validation
rows. ``grouping.crossfit`` scores each k on rows its groups were not built from
(affinity/crossfit.py). This re-scores the recorded rows both ways: the candidates' groupings at
every k are the recorded ones (built on all rows, their test losses recorded with ``--candidates``),
so the choice of each check can be read against the same test losses without training any grouping
again; only the half affinities and the check's models are trained.

    python benchmarks/crossfit.py --run runs/outcome/3 runs/outcome/4 --datasets unrelated mixed --seeds 3 4 \\
        --out runs/crossfit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from check_fidelity import evaluation_path  # noqa: E402
from outcome import HEADER, criteria, line, manifest_for, replayed, settings  # noqa: E402

from affinity.advice import groups_at  # noqa: E402
from affinity.choice import fold_gains  # noqa: E402
from affinity.crossfit import crossfit_scores  # noqa: E402
from affinity.estimators import reestimator  # noqa: E402
from affinity.outcome import held_out  # noqa: E402
from affinity.pipeline import context, prepare  # noqa: E402
from affinity.progress import Progress  # noqa: E402


def crossfit(dataset: str, seed: int, row: dict[str, Any], advice: dict[str, Any],
             overrides: dict[str, Any]) -> dict[str, Any]:
    """The row with k chosen by the cross-fitted check (its fold scores replace the recorded ones); ``overrides``:
    the run's own settings (those its candidates were built with)."""
    m = held_out(manifest_for(dataset, seed, overrides))
    spec = m.grouping
    prep = prepare(m, Progress())
    affinity = [c for c in advice["candidates"] if c.get("source") != "outputs"]  # cross-fitting rebuilds T's groups
    ks = [c["k"] for c in affinity]
    scores, _ = crossfit_scores(prep.data, prep.tensors, m, ks, reestimator(context(prep, m, Progress())),
                                lambda T, k: groups_at(T, k, spec))
    cands = [{**c, "predicted_val_loss": scores[c["k"]].total(), "fold_gains": fold_gains(scores[c["k"]], scores[1])}
             for c in affinity]
    return replayed({**row, "candidates": cands}, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", nargs="+", type=Path, required=True, help="outcome runs recorded with --candidates")
    ap.add_argument("--datasets", nargs="+", required=True)
    ap.add_argument("--seeds", nargs="+", type=int, required=True)
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=JSON",
                    help="the recorded run's own settings, e.g. 'estimation.pairwise=\"regression\"'")
    ap.add_argument("--out", type=Path, default=Path("runs/crossfit"))
    args = ap.parse_args()
    overrides = settings(args.set)
    recorded = []
    for run in args.run:
        recorded += json.loads((run / "outcome.json").read_text())["rows"]
    print(HEADER)
    out = []
    for dataset in args.datasets:
        for seed in args.seeds:
            row = next((r for r in recorded if r["dataset"] == dataset and r["seed"] == seed), None)
            path = next((p for p in (evaluation_path(r, dataset, seed) for r in args.run) if p.exists()), None)
            if row is None or path is None:
                continue
            advice = next(iter(json.loads(path.read_text())["advice"].values()))
            t0 = time.perf_counter()
            new = {**crossfit(dataset, seed, row, advice, overrides), "seconds": time.perf_counter() - t0}
            print(line(new) + f"   (plain check: k {row['k']})", flush=True)
            out.append(new)
    summary = criteria(out)
    print("criteria:", json.dumps(summary))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outcome.json").write_text(json.dumps({"rows": out, "criteria": summary}, indent=1))


if __name__ == "__main__":
    main()
