"""benchmarks/stage_table.py: the "What ships" rows come from the JSON files eval wrote, ratios computed
from the numbers in them, rows of a missing file left out, a bad stage name one clear line."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("stage_table", ROOT / "benchmarks" / "stage_table.py")
stage_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_table)


def _gen(acc, real, fd, ref):
    return {"generated": {"accuracy": {"group": acc}, "real_accuracy_same_rows": {"group": real},
                          "fd_generated_real": fd, "fd_reference": ref}}


def test_rows_are_computed_from_the_files_and_missing_parts_left_out(tmp_path):
    (tmp_path / "eval_emojiA_all.json").write_text(json.dumps(_gen(0.6, 0.8, 3.0, 1.5)))
    (tmp_path / "eval_emojiA_comp_all.json").write_text(json.dumps({"composition": {
        "both": 0.25, "colour": 0.5, "object": 0.75, "object_given_plain": 0.125,
        "plain_object": {"n": 8, "object": 0.875},
        "per_colour": {"red": {"colour": 0.5, "object": 0.25}, "white": {"colour": 1.0, "object": 0.0}}}}))
    suffixed = {"fluent": {"judged_as_asked": 0.25}, "noto": {"judged_as_asked": 0.5}}
    (tmp_path / "eval_emojiA_style64_s9.json").write_text(json.dumps({"style": {
        "suffixed": suffixed, "suffixed_mean": 0.0, "real_accuracy_mean": 0.0, "vae_accuracy_mean": 0.0}}))
    (tmp_path / "eval_emojiA_style64_s14.json").write_text(json.dumps({"style": {
        "suffixed": suffixed, "suffixed_mean": 0.375, "real_accuracy_mean": 0.9, "vae_accuracy_mean": 0.8}}))
    (tmp_path / "eval_emojiB_all.json").write_text(json.dumps(_gen(0.4, 0.8, 1.0, 0.5)))
    a = stage_table.stage_rows(tmp_path, "A")
    b = stage_table.stage_rows(tmp_path, "B")
    assert a["group, Noto judge, 2,786"] == "60.0% vs 80.0% = 0.75×"
    assert a["FD all styles, Noto judge"] == "3.00 vs 1.500 = 2.00×"
    assert b["group, Noto judge, 2,786"] == "40.0% vs 80.0% = 0.50×"
    assert a["composition, all-styles gallery"] == ("25.0% (colour 50.0%, object 75.0%; plain name drawn right 87.5%, "
                                                     "of those kept with the colour 12.5%)")
    assert a["composition by colour asked, colour / object right"] == "red 50/25, white 100/0"
    assert a["style, 12-epoch classifier (F / N / O / T); its real / VAE-round-trip accuracy"] == (
        "37.5% (25.0 / 50.0); 90.0% / 80.0%")                  # the later session of the two (s14, not s9)
    assert "composition, all-styles gallery" not in b          # B has no comp_all file
    assert not any(k.startswith("style, 12") for k in b)
    assert not any(k.startswith("style ") for k in a)          # no style_guidance file


def test_markdown_table_has_one_column_per_stage(tmp_path, capsys):
    (tmp_path / "eval_emojiA_365.json").write_text(json.dumps(_gen(0.5, 1.0, 2.0, 1.0)))
    (tmp_path / "eval_emojiB_365.json").write_text(json.dumps(_gen(1.0, 1.0, 4.0, 1.0)))
    assert stage_table.main(["A", "B", "--docs", str(tmp_path), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| | stage A | stage B |"
    assert "| FD 365 Noto | 2.00 vs 1.000 = 2.00× | 4.00 vs 1.000 = 4.00× |" in lines


def test_unknown_stage_is_one_clear_line(tmp_path, capsys):
    assert stage_table.main(["nope", "--docs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 'nope'" in err[0] and "check the name" in err[0]
