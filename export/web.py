"""Turn an export into a static web page that runs the model in the browser.

    python -m export.web --export exports/synthetic-clade --out web/synthetic-clade [--serve] [--port 8000]

The site (`--out`) holds the page, the export's model file, the class names and colours,
example label maps and the browser runtime's JS/WASM files (from `node_modules/`, installed
by `npm ci` in the checkout); nothing is fetched from the internet when it runs, and no
server computes anything: the same folder works from any static host. `--serve` serves it
on localhost with the cross-origin-isolation headers that multi-threaded WebAssembly needs.

Runtimes: `litert` (default) runs the `.tflite` (model_fp32.tflite) with LiteRT.js, `ort`
the `.onnx` with onnxruntime-web; `--model FILE` picks another file of the export (e.g.
model_int8.tflite). The preset (class names, palette) is found from the model's class
count and size; `--preset` names it.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    from clade_tf.cli import import_tensorflow

    import_tensorflow()  # first: TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL
    from clade_tf.cli import ArgumentParser, exit_code
    from clade_tf.export.web import RUNTIMES, WebError, build_site, serve
    from clade_tf.presets import PRESETS

    p = ArgumentParser(prog="python -m export.web", description=__doc__)
    p.add_argument("--export", required=True, help="export directory of python -m export")
    p.add_argument("--out", required=True, help="site directory to write")
    p.add_argument("--runtime", choices=sorted(RUNTIMES), help="browser runtime (default: litert, else ort)")
    p.add_argument("--model", metavar="FILE", help="model file of the export to run (default: the runtime's fp32)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="class names and colours (default: from the model)")
    p.add_argument("--force", action="store_true", help="replace an earlier site at --out")
    p.add_argument("--serve", action="store_true", help="serve the site on localhost after writing it")
    p.add_argument("--port", type=int, default=8000, help="port of --serve (0: any free port)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port}: expected 0..65535", file=sys.stderr)
        return 2
    try:
        cfg = build_site(args.export, args.out, args.preset, args.runtime, args.model, args.force)
        print(f"wrote {args.out}: {cfg['model']} on {cfg['runtime']}, {cfg['num_classes']} classes"
              f"{' (' + cfg['preset'] + ')' if cfg['preset'] else ''}")
        if not args.serve:
            print(f"serve it with: python -m export.web --export {args.export} --out {args.out} --force --serve "
                  "(or any static web server)")
            return 0
        server = serve(args.out, args.port)
    except Exception as e:  # noqa: BLE001 (exit_code re-raises what it does not report)
        return exit_code(e, usage=(WebError,), where=args.out)  # an OSError: e.g. the disk filled up
    host, port = server.server_address[:2]
    print(f"serving {args.out} at http://{host}:{port}/ (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
