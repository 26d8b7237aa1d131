"""The two exams, as figures: published measurements predicted with the shipped profiles, and the CPU
validation record's error and ordering agreement.

    python benchmarks/published_runs.py

Prints the published-runs table (measured, predicted, error %), its mean and max |error| and how many
rows fall within 25 %, per source; then, for each committed suite record in validate/records/, the
mean and max |error| of its replayed cases and the share of policy pairs whose measured order agrees
with the predicted one.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from validate.published import predict_published, summary, table

RECORDS = Path(__file__).resolve().parent.parent / "validate" / "records"


def main() -> None:
    results = predict_published()
    print(table(results))
    by_source: dict[str, list[float]] = defaultdict(list)
    for r in results:
        if r.error_pct is not None:
            by_source[r.id.split("-t4-")[0].split("-a6000-")[0]].append(abs(r.error_pct))
    print("\nper source: " + "; ".join(f"{k} mean {statistics.fmean(v):.1f} % (n={len(v)})"
                                      for k, v in sorted(by_source.items())))
    s = summary(results)
    print(f"target: each within 25 % -> {s['within_25pct']} of {s['predicted']} rows")
    for path in sorted(RECORDS.glob("*.json")):
        data = json.loads(path.read_text())
        cases = [c for c in data.get("cases", []) if c.get("status") == "replayed"]
        if not cases:
            continue
        errs = [abs(c["error_pct"]) for c in cases]
        order = data.get("ordering") or data.get("summary", {}).get("ordering")
        agree = f"; ordering {order['agree']} of {order['pairs']} pairs agree" if isinstance(order, dict) and \
            "agree" in order and "pairs" in order else "; no ordering check in this record"
        print(f"{path.name}: {data.get('device_name')}, mean |error| {statistics.fmean(errs):.1f} %, "
              f"max {max(errs):.1f} % over {len(cases)} cases{agree}")


if __name__ == "__main__":
    main()
