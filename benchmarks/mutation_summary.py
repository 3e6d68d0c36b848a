"""After `mutmut run` (`make mutate`): killed / survived / timeout / no tests per module and in all,
the survival rate, and the surviving mutants by name (`mutmut show NAME` prints one as a diff).

    python benchmarks/mutation_summary.py [MUTANTS_DIR]
"""
from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

# mutmut 3's exit codes of a mutant's test run (mutmut/stats.py)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
          37: "type check", None: "not checked"}
COLUMNS = ["killed", "survived", "timeout", "no tests", "not checked"]


def load(mutants: Path) -> dict[str, dict[str, str]]:
    """{module path: {mutant name: status}} from mutmut's .meta files."""
    out = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out[str(meta.relative_to(mutants))[:-len(".meta")]] = {k: STATUS.get(v, "suspicious") for k, v in codes.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    mutants = Path(argv[0] if argv else "mutants")
    data = load(mutants)
    if not data:
        print(f"no mutmut results under {mutants}/ (run `make mutate`)", file=sys.stderr)
        return 2
    total: collections.Counter = collections.Counter()
    print(f"{'module':40s}" + "".join(f"{c:>12s}" for c in COLUMNS))
    for module, statuses in data.items():
        n = collections.Counter(statuses.values())
        total.update(n)
        print(f"{module:40s}" + "".join(f"{n[c]:>12d}" for c in COLUMNS))
    print(f"{'all':40s}" + "".join(f"{total[c]:>12d}" for c in COLUMNS))
    tested = total["killed"] + total["survived"] + total["timeout"]
    rate = total["survived"] / tested if tested else 0.0
    print(f"survival rate {rate:.1%} ({total['survived']} of {tested} mutants with tests); "
          f"{total['no tests']} mutants no selected test reaches")
    survivors = [k for statuses in data.values() for k, s in statuses.items() if s == "survived"]
    print("survivors (`.venv/bin/mutmut show NAME`):")
    for name in survivors:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
