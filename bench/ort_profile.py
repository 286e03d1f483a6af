"""Sum an onnxruntime profile (TLEARN_ORT_PROFILE=prefix …) per operator type.

usage: ort_profile.py PROFILE.json [TOP]   → op type, total ms, share, calls; per-run mean.
"""
import collections
import json
import sys

events = json.load(open(sys.argv[1]))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
per_op, calls = collections.Counter(), collections.Counter()
runs = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
for e in events:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        op = e.get("args", {}).get("op_name", "?")
        per_op[op] += e["dur"]
        calls[op] += 1
total = sum(per_op.values()) or 1
print(f"{len(runs)} runs, mean {sum(runs) / max(len(runs), 1) / 1e3:.1f} ms per run; kernel time by op:")
for op, us in per_op.most_common(top):
    print(f"{op:<24}{us / 1e3:>10.1f} ms {100 * us / total:>6.1f} %  {calls[op]:>6} calls")
