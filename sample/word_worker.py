# A ward worker: one JSON request per line on stdin, one JSON reply per line on stdout.
import json, sys

for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["event"] != "removed":
            words = len(open(req["path"], encoding="utf-8", errors="replace").read().split())
            print(f"{req['path']}: {words} words", file=sys.stderr)  # stderr goes to ward's log
        print(json.dumps({"id": req["id"], "ok": True}), flush=True)
    except Exception as e:
        print(json.dumps({"id": req["id"], "ok": False, "error": str(e)}), flush=True)
