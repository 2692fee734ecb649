"""Which ops of an exported `.tflite` file the phone delegates run, and which fall back.

    python -m export.delegates exports/run/model_fp16.tflite
    python -m export.delegates exports/run            # every .tflite file of an export
    python -m export.delegates exports/run --json     # the whole verdict, as report.json holds it

GPU delegate (Android / iOS; LiteRT.js's WebGPU backend is the same delegate): the file's ops
are checked against the delegate's published rules (op versions, tensor ranks and types,
per-op options); every op it would leave on the CPU is listed with the rule it breaks.
XNNPACK (the CPU delegate, also LiteRT.js's wasm backend): the file is loaded in LiteRT's
interpreter and its partitions and the ops left outside them are counted. One line per file
without --json. Exit status 0 once every file is checked, whatever the verdicts.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def model_files(paths):
    """The .tflite files named, a directory standing for the .tflite files in it."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".tflite"))
            if not found:
                raise FileNotFoundError(f"{p}: no .tflite file in this directory")
            files += found
        elif not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: no such file or directory")
        else:
            files.append(p)
    return files


def main(argv=None):
    from clade_tf.cli import ArgumentParser, exit_code

    p = ArgumentParser(prog="python -m export.delegates", description=__doc__)
    p.add_argument("models", nargs="+", metavar="MODEL", help=".tflite file, or an export directory")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON ({file: {gpu, xnnpack}})")
    p.add_argument("--ops", action="store_true", help="also list every refused op and op outside XNNPACK")
    args = p.parse_args(argv)
    try:
        from clade_tf.export import delegates

        results = {}
        for path in model_files(args.models):
            results[path] = result = delegates.check(path)
            if not args.json:
                print(f"{path}: {delegates.summary(result)}")
                if args.ops:
                    for r in result["gpu"]["refused"]:
                        print(f"  GPU delegate refuses op {r['index']} {r['op']}: {r['reason']}")
                    for r in result["xnnpack"]["outside"]:
                        print(f"  outside XNNPACK: op {r['index']} {r['op']}")
        if args.json:
            print(json.dumps(results, indent=1))
        return 0
    except Exception as e:  # noqa: BLE001 (exit_code re-raises what it does not report)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
