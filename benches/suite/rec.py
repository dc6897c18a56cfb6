#!/usr/bin/env python3
"""Appends one record to the suite's results (a JSON line per record).

    rec.py FILE key=value...

Records with kind=target are the table's rows: what, ferry (figure), ref (figure),
unit, and either compare=speed (both figures are seconds of the same work: ratio =
ref / ferry, higher is better) or compare=size (ratio = ferry / ref, lower is better),
or an explicit ratio=; target is the threshold and op is >= or <=. kind=info rows carry
a figure without a target, kind=curve the points of the cost curves, kind=note text.
Numbers are stored as numbers.
"""
import json, sys

path = sys.argv[1]
r = {}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    for t in (int, float):
        try:
            v = t(v); break
        except ValueError:
            pass
    r[k] = v
r.setdefault("kind", "target")
if r["kind"] == "target" and "ratio" not in r:
    f, g = r.get("ferry"), r.get("ref")
    if isinstance(f, (int, float)) and isinstance(g, (int, float)) and f > 0 and g > 0:
        r["ratio"] = round(g / f, 3) if r.get("compare") == "speed" else round(f / g, 3)
with open(path, "a") as out:
    out.write(json.dumps(r) + "\n")
