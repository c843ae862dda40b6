"""Counts of a PEFT-suite run from pytest's JUnit XML: passed/failed/error/skipped per
test file and method (GenFT, WeGeFT), each failure with its first error line, and the
skip reasons with their counts. Usage: ``python summarize.py JUNIT_XML [OUT_JSON]``.
"""

import collections
import json
import sys
import xml.etree.ElementTree as ET


def method_of(name: str) -> str:
    low = name.lower()
    return "WeGeFT" if "wegeft" in low else "GenFT" if "genft" in low else "other"


def first_line(element) -> str:
    message = (element.get("message") or "").strip()
    text = (element.text or "").strip()
    lines = [ln for ln in text.splitlines() if ln.startswith("E ")]
    return (lines[0][1:].strip() if lines else message.splitlines()[0] if message else "")[:300]


def summarize(path: str) -> dict:
    counts = collections.Counter()
    by = collections.defaultdict(collections.Counter)
    failures, skips = [], collections.Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        file = case.get("classname", "").split(".")[1] if "." in case.get("classname", "") else case.get("classname")
        test_id = f"{case.get('classname')}::{case.get('name')}"
        status = "passed"
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                if tag == "skipped":
                    skips[(element.get("message") or "").strip()[:200]] += 1
                else:
                    failures.append({"id": test_id, "status": status, "error": first_line(element)})
                break
        counts[status] += 1
        by[f"{file} {method_of(case.get('name'))}"][status] += 1
    return {
        "total": dict(counts),
        "by_file_method": {k: dict(v) for k, v in sorted(by.items())},
        "failures": failures,
        "skip_reasons": dict(skips.most_common()),
    }


def main() -> None:
    result = summarize(sys.argv[1])
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(result, f, indent=1)
    total = result["total"]
    print("TOTAL " + " ".join(f"{k}={total.get(k, 0)}" for k in ("passed", "failed", "error", "skipped")))
    for key, c in result["by_file_method"].items():
        print(f"  {key}: " + " ".join(f"{k}={c.get(k, 0)}" for k in ("passed", "failed", "error", "skipped")))
    errors = collections.Counter(f["error"] for f in result["failures"])
    print("failures by first error line:")
    for line, n in errors.most_common():
        print(f"  {n:4d}  {line}")
    print("skip reasons:")
    for line, n in result["skip_reasons"].items():
        print(f"  {n:4d}  {line}")


if __name__ == "__main__":
    main()
