"""Student inference throughput, transformers backend on CPU: batched (32 prompts a call) vs one prompt at a time.

    python bench/student_infer.py [--hidden 128 --layers 4 --new-tokens 48 --repeats 3] [--json]

The prompts are the real Vicuna-80 questions (../shared/data/vicuna80/question.jsonl) in the student's prompt
format; the model is the smoke-run-sized tiny LLaMA (character vocabulary, random weights). Both sides call the
backend's own code (`lion.student.infer.load_model` + `generate_hf`, sorted by length, left-padded), with
`min_new_tokens = max_new_tokens` so every prompt yields the same number of tokens. The sides alternate in one
run (the CPU is shared) and the figure is the ratio of median generated tokens per second. Target >= 8x.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUESTIONS = ROOT.parent / "shared" / "data" / "vicuna80" / "question.jsonl"


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from lion.config import InferConfig
    from lion.student.data import encode_prompt, format_prompt
    from lion.student.infer import generate_hf, load_model
    from lion.student.threads import cpu_threads
    from lion.student.tiny import build_tiny

    if not QUESTIONS.is_file():
        raise SystemExit(f"missing {QUESTIONS} (the shared data sets)")
    rows = [json.loads(x) for x in QUESTIONS.read_text().splitlines()]
    texts = [r.get("text") or r["turns"][0] for r in rows][: args.batch]
    base = build_tiny(Path(tempfile.mkdtemp(prefix="lion-bench-infer-")) / "m", vocab="char", hidden=args.hidden,
                      layers=args.layers, heads=4)
    tok = AutoTokenizer.from_pretrained(base)
    ids = [encode_prompt(tok, format_prompt(t)) for t in texts]
    model = load_model(str(base), InferConfig())
    new = args.new_tokens
    batched_cfg = InferConfig(batch_size=args.batch, max_new_tokens=new)
    single_cfg = InferConfig(batch_size=1, max_new_tokens=new)
    single_ids = ids[: args.single_prompts]
    rates: dict[str, list[float]] = {"batched": [], "single": []}
    with cpu_threads(model, args.threads) as threads:
        generate_hf(model, tok, ids[:2], single_cfg, progress=False, min_new_tokens=new)  # warm-up
        for rep in range(args.repeats):
            for name, cfg, batch in (("batched", batched_cfg, ids), ("single", single_cfg, single_ids)):
                t = time.perf_counter()
                out = generate_hf(model, tok, batch, cfg, progress=False, min_new_tokens=new)
                dt = time.perf_counter() - t
                assert len(out) == len(batch)
                rates[name].append(len(batch) * new / dt)
                print(f"rep {rep} {name:7s}: {len(batch):2d} prompts, {rates[name][-1]:8.1f} tokens/s", flush=True)
    batched = statistics.median(rates["batched"])
    single = statistics.median(rates["single"])
    ratio = batched / single
    print(f"prompt tokens: mean {statistics.mean(len(i) for i in ids):.0f}; {new} new tokens each; {threads} thread(s)")
    print(f"batched ({args.batch}) / one at a time: {ratio:.1f}x (target >= 8x)")
    return {"bench": "student_infer", "device": "cpu", "backend": "transformers", "batch": args.batch,
            "ratio_batched_vs_single": round(ratio, 2), "target": 8.0, "pass": ratio >= 8.0,
            "batched_tokens_per_s": round(batched, 1), "single_tokens_per_s": round(single, 1), "new_tokens": new,
            "threads": threads, "model": {"hidden": args.hidden, "layers": args.layers, "vocab": "char"},
            "repeats": args.repeats}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--single-prompts", type=int, default=6, help="prompts timed one at a time per repeat")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = the backend's auto rule")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.json:
        with contextlib.redirect_stdout(io.StringIO()):
            res = run(args)
    else:
        res = run(args)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
