"""Run by tests/test_docs.py: one documentation page's code blocks, in the page's order, as a reader would.

    python docs_runner.py STEPS_JSON RESULT_JSON      (in the workspace folder the commands are written for)

`STEPS_JSON` lists the page's steps, each `{"label", "language", "code"}`: a `python` block is executed in one
namespace shared by the page's python blocks (a later snippet may use a name an earlier one made), a `bash` step is
one command run by bash. The first failing step stops the page (later steps may need what it made); the labels of
the steps done, and the failure's label and traceback or output, go to `RESULT_JSON`.
"""

import json
import subprocess
import sys
import time
import traceback


def main() -> None:
    steps_file, result_file = sys.argv[1], sys.argv[2]
    with open(steps_file, encoding="utf-8") as file:
        steps = json.load(file)
    namespace = {"__name__": "__main__"}
    result = {"done": [], "failed": None, "error": None, "seconds": {}}
    for step in steps:
        started = time.monotonic()
        print(f"--- {step['label']}", flush=True)
        try:
            if step["language"] == "python":
                exec(compile(step["code"], step["label"], "exec"), namespace)
            else:
                run = subprocess.run(["bash", "-c", step["code"]], capture_output=True, text=True)
                if run.returncode != 0:
                    raise RuntimeError(f"exit status {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
        except Exception:
            result["failed"], result["error"] = step["label"], traceback.format_exc()
            break
        result["done"].append(step["label"])
        result["seconds"][step["label"]] = round(time.monotonic() - started, 1)
    with open(result_file, "w", encoding="utf-8") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main()
