"""The numbers of README's "What ships" table for two stages of the built-in emoji model, side by side,
read from the JSON files ``latentdiff eval`` and ``benchmarks/style_guidance.py`` wrote (issue 14).

Each stage is a name, and its files are ``docs/eval_emoji<name>_<part>.json`` and
``docs/style_guidance_emoji<name>.json``; a missing file leaves its rows out (a stage measured in part).
Parts read:

* ``alljudge_full``: ``--dataset emoji:all --label-columns group,subgroup,style --evaluator
  runs/evaluator-emoji-all --sections real,generated`` (group ratio and Fréchet distance, all styles);
* ``all``: the same with the Noto-trained evaluator (``runs/evaluator-emoji``);
* ``365``: ``--sections generated`` on the 365 Noto test captions;
* ``g4``: ``--sections generated,colour,skin,diversity,composition --limit 160 --skin-limit 40
  --composition-limit 400 --colour-seeds 4`` (Noto gallery);
* ``comp_all``: ``--sections composition --composition-limit 400 --composition-gallery emoji:all``
  (both right overall, and colour / object right per colour asked);
* ``style64``: ``--sections style --styles noto,twemoji,openmoji,fluent --style-limit 64
  --style-evaluator-epochs 12`` (the 12-epoch style classifier; ``style64_<session>`` names, e.g.
  ``style64_s14``, count too, the latest session's when there are several).

    python benchmarks/stage_table.py 8 7
    python benchmarks/stage_table.py 8 7 --markdown > /tmp/table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("fluent", "noto", "openmoji", "twemoji")
# the parts that give a group ratio and a Fréchet distance: (file part, group row, distance row)
GROUP_FD_PARTS = (
    ("alljudge_full", "group, all-styles judge, 2,786", "FD all styles, all-styles judge"),
    ("all", "group, Noto judge, 2,786", "FD all styles, Noto judge"),
    ("365", "group, Noto judge, 365", "FD 365 Noto"),
)


def _load(docs: Path, name: str) -> dict | None:
    path = docs / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not JSON ({e}); re-run the command that writes it") from None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _group_fd(gen: dict) -> tuple[str, str]:
    acc, real = gen["accuracy"]["group"], gen["real_accuracy_same_rows"]["group"]
    fd, ref = gen["fd_generated_real"], gen["fd_reference"]
    return (f"{_pct(acc)} vs {_pct(real)} = {acc / real:.2f}×", f"{fd:.2f} vs {ref:.3f} = {fd / ref:.2f}×")


def stage_rows(docs: Path, stage: str) -> dict[str, str]:
    """Row label -> cell text for one stage; rows whose file is missing are absent."""
    rows: dict[str, str] = {}
    part = lambda p: _load(docs, f"eval_emoji{stage}_{p}.json")  # noqa: E731
    if (d := part("g4")) is not None:
        dv, c, sk = d["diversity"], d["colour"], d["skin"]
        rows["diversity, pixel / features"] = f"{dv['pixel']['ratio']:.2f}× / {dv['feature']['ratio']:.2f}×"
        seeds = c.get("per_seed") or []
        spread = f" (per seed {_pct(min(seeds))}–{_pct(max(seeds))})" if seeds else ""
        rows["colour words"] = f"{_pct(c['rate'])} ({c['obeyed']}/{c['n']}){spread}"
        rows["skin tone, pairs (fully ordered)"] = f"{_pct(sk['pairs_obeyed'])} ({_pct(sk['fully_ordered'])})"
        rows["group, Noto judge, 160"] = _group_fd(d["generated"])[0]
        cp = d["composition"]
        rows["composition, Noto gallery"] = f"{_pct(cp['both'])} (colour {_pct(cp['colour'])}, object {_pct(cp['object'])})"
    for name, group_label, fd_label in GROUP_FD_PARTS:
        if (d := part(name)) is not None:
            rows[group_label], rows[fd_label] = _group_fd(d["generated"])
    if (d := part("comp_all")) is not None:
        cp = d["composition"]
        rows["composition, all-styles gallery"] = (
            f"{_pct(cp['both'])} (colour {_pct(cp['colour'])}, object {_pct(cp['object'])}; "
            f"plain name drawn right {_pct(cp['plain_object']['object'])}, of those kept with the colour "
            f"{_pct(cp['object_given_plain'])})")
        rows["composition by colour asked, colour / object right"] = ", ".join(
            f"{c} {100 * x['colour']:.0f}/{100 * x['object']:.0f}" for c, x in cp["per_colour"].items())
    styles = sorted(docs.glob(f"eval_emoji{stage}_style64*.json"), key=lambda p: (len(p.name), p.name))  # s9 < s14
    if styles and (d := _load(docs, styles[-1].name)) is not None:
        st = d["style"]
        per = " / ".join(f"{100 * st['suffixed'][s]['judged_as_asked']:.1f}" for s in STYLES if s in st["suffixed"])
        rows["style, 12-epoch classifier (F / N / O / T); its real / VAE-round-trip accuracy"] = (
            f"{_pct(st['suffixed_mean'])} ({per}); {_pct(st['real_accuracy_mean'])} / {_pct(st['vae_accuracy_mean'])}")
    if (sg := _load(docs, f"style_guidance_emoji{stage}.json")) is not None:
        for name, v in sg["variants"].items():
            per = " / ".join(f"{100 * v['suffixed'][s]['judged_as_asked']:.1f}" for s in STYLES if s in v["suffixed"])
            rows[f"style {name} (F / N / O / T), group"] = (
                f"{_pct(v['suffixed_mean'])} ({per}), group {_pct(v['suffixed_group_accuracy_mean'])}")
        v = next(iter(sg["variants"].values()))
        rows["plain prompts judged F / N / O / T"] = " / ".join(
            f"{100 * v['plain_distribution'].get(s, 0.0):.1f}" for s in STYLES)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python benchmarks/stage_table.py 8 7\n"
               "  python benchmarks/stage_table.py 8 7 --docs docs --markdown",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", help="stage names as in docs/eval_emoji<name>_*.json, e.g. 8 7")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="folder of the JSON files (default: docs/)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table instead of aligned text")
    args = ap.parse_args(argv)
    if not args.docs.is_dir():
        print(f"--docs {args.docs}: not a folder; pass the folder that holds docs/eval_emoji*.json", file=sys.stderr)
        return 2
    per_stage = [stage_rows(args.docs, s) for s in args.stages]
    for s, rows in zip(args.stages, per_stage):
        if not rows:
            print(f"stage {s!r}: no docs/eval_emoji{s}_*.json or docs/style_guidance_emoji{s}.json in "
                  f"{args.docs}; check the name", file=sys.stderr)
            return 2
    labels = list(dict.fromkeys(k for rows in per_stage for k in rows))
    if args.markdown:
        print("| | " + " | ".join(f"stage {s}" for s in args.stages) + " |")
        print("|---" * (len(args.stages) + 1) + "|")
        for k in labels:
            print(f"| {k} | " + " | ".join(rows.get(k, "–") for rows in per_stage) + " |")
    else:
        w = max(map(len, labels))
        for k in labels:
            print(f"{k:<{w}}  " + "  |  ".join(rows.get(k, "–") for rows in per_stage))
    return 0


if __name__ == "__main__":
    sys.exit(main())
