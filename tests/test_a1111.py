"""A1111 conventions without a server: sampler/scheduler tables, infotext, <lora:...> prompt tags."""

import pytest

from latentdiff import a1111
from latentdiff.samplers import SAMPLERS

# Written by A1111 1.10 (create_infotext) for a LoRA prompt: "Lora hashes" is quoted because it
# holds commas and colons, and the prompt and negative prompt span two lines each.
A1111_INFOTEXT = """masterpiece, red apple <lora:shiny:0.8>
on a table
Negative prompt: blurry,
lowres
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "shiny: 0123456789ab, other: ba9876543210", \
Version: v1.10.1"""


def test_parse_infotext_reads_a1111s_format():
    p = a1111.parse_infotext(A1111_INFOTEXT)
    assert p["Prompt"] == "masterpiece, red apple <lora:shiny:0.8>\non a table"
    assert p["Negative prompt"] == "blurry,\nlowres"
    assert (p["Steps"], p["Sampler"], p["Schedule type"], p["CFG scale"], p["Seed"]) == \
        ("20", "DPM++ 2M", "Karras", "7", "1234")
    assert (p["Size-1"], p["Size-2"]) == ("512", "768")
    assert p["Lora hashes"] == "shiny: 0123456789ab, other: ba9876543210"
    assert p["Version"] == "v1.10.1"


def test_format_then_parse_round_trips_values_that_need_quoting():
    fields = {"Steps": 3, "Sampler": "DDIM", "CFG scale": 4.5, "Seed": 7, "Size": "32x64",
              "Model": "a, b: c", "Lora hashes": "x: 1, y: 2", "Eta DDIM": None}
    text = a1111.format_infotext("red apple\nsecond line", "green, blurry", fields)
    assert "Eta DDIM" not in text  # None values are left out, as A1111 does
    p = a1111.parse_infotext(text)
    assert (p["Prompt"], p["Negative prompt"]) == ("red apple\nsecond line", "green, blurry")
    assert (p["Model"], p["Lora hashes"], p["Size-1"], p["Size-2"]) == ("a, b: c", "x: 1, y: 2", "32", "64")
    assert (p["Steps"], p["CFG scale"], p["Seed"]) == ("3", "4.5", "7")


def test_infotext_without_parameters_is_all_prompt():
    assert a1111.parse_infotext("just a prompt") == {"Prompt": "just a prompt", "Negative prompt": ""}


def test_every_table_entry_is_a_sampler_the_pipeline_has():
    for s in a1111.A1111_SAMPLERS:
        assert s.kwargs["sampler"] in SAMPLERS, s
    names = [n.lower() for s in a1111.A1111_SAMPLERS for n in (s.name, *s.aliases)]
    assert len(names) == len(set(names)), "a name or alias maps to two samplers"


def test_sampler_lookup_by_name_and_alias_and_unknown_lists_valid_names():
    assert a1111.find_sampler("DPM++ 2M").kwargs == {"sampler": "dpmpp_2m"}
    assert a1111.find_sampler("ddim").kwargs == {"sampler": "ddim"}
    assert a1111.find_sampler("k_dpmpp_2m").name == "DPM++ 2M"
    assert a1111.sampler_for("ddpm").name == "DDPM"
    assert a1111.find_sampler("Euler a").kwargs == {"sampler": "euler_a"}
    assert a1111.find_sampler("DPM++ 2M Karras").kwargs == {"sampler": "dpmpp_2m", "sigma_schedule": "karras"}
    assert a1111.find_sampler("dpm++ 2m sde exponential").kwargs == {"sampler": "dpmpp_2m_sde",
                                                                      "sigma_schedule": "exponential"}
    with pytest.raises(ValueError, match=r"Unknown sampler 'Euler b'; choose one of Euler, Euler a"):
        a1111.find_sampler("Euler b")
    assert a1111.find_scheduler("Automatic").kwargs == {}
    assert a1111.find_scheduler("trailing").kwargs == {"timestep_spacing": "trailing"}
    assert a1111.find_scheduler("karras").kwargs == {"sigma_schedule": "karras"}
    with pytest.raises(ValueError, match="Unknown scheduler 'kerras'; choose one of automatic"):
        a1111.find_scheduler("kerras")


def test_a1111_names_agree_with_the_pipelines_parser():
    """Every name the server accepts resolves to the same sampler and schedule in the pipeline."""
    from latentdiff.samplers import resolve_sampler

    for s in a1111.A1111_SAMPLERS:
        if s.name == "DPM++ 1":  # the server's name for dpmpp_1, which A1111 does not have
            continue
        sampler, schedule = resolve_sampler(s.name, None)
        assert sampler == s.kwargs["sampler"] and (schedule or None) == s.kwargs.get("sigma_schedule"), s


def test_prompt_tags():
    t = a1111.parse_prompt_tags("red <lora:shiny:0.8> apple <lora:flat> <hypernet:x:1>")
    assert t.prompt == "red apple"
    assert t.loras == [("shiny", 0.8), ("flat", 1.0)]
    assert t.ignored == ["<hypernet:x:1>"]
    assert a1111.parse_prompt_tags("<lora:a:0.5:0.5>").loras == [("a", 0.5)]
    assert a1111.parse_prompt_tags("<lora:../up:1>").loras == [("../up", 1.0)]  # the server refuses the name
    with pytest.raises(ValueError, match="weight must be a number"):
        a1111.parse_prompt_tags("<lora:a:lots>")
    with pytest.raises(ValueError, match="separate text-encoder and U-Net weights are not supported"):
        a1111.parse_prompt_tags("<lora:a:1:0.5>")


def test_params_from_infotext_refuses_what_it_cannot_reproduce():
    with pytest.raises(ValueError, match=r"extra-network tags \(<lora:shiny:0.8>\); --from-png cannot resolve"):
        a1111.params_from_infotext(A1111_INFOTEXT)
    no_tags = A1111_INFOTEXT.replace(" <lora:shiny:0.8>", "")
    params = a1111.params_from_infotext(no_tags)  # DPM++ 2M + Karras: both ours now
    assert (params["sampler"], params["sigma_schedule"], params["steps"]) == ("dpmpp_2m", "karras", 20)
    with pytest.raises(ValueError, match="Unknown scheduler 'Kerras'"):
        a1111.params_from_infotext(no_tags.replace("Karras", "Kerras"))
    with pytest.raises(ValueError, match="lack Steps"):
        a1111.params_from_infotext("red apple\nSampler: DDIM, Seed: 1, CFG scale: 7, Size: 8x8")


def test_from_png_reads_an_a1111_png(tiny_pipeline_dir, tmp_path, capsys):
    """A PNG with only A1111's infotext (no latentdiff chunk): --from-png takes every setting from it."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from latentdiff.cli import main
    from latentdiff.pipelines import TextToImagePipeline

    info = PngInfo()
    info.add_text("parameters", a1111.format_infotext("red apple", "blurry, green", {
        "Steps": 3, "Sampler": "DDIM", "Schedule type": "Trailing", "CFG scale": 4.5, "Seed": 9, "Size": "32x32",
        "Model": str(tiny_pipeline_dir), "Eta DDIM": 0.5, "Version": "v1.10.1"}))
    png = tmp_path / "a1111.png"
    Image.new("RGB", (32, 32)).save(png, pnginfo=info)
    assert main(["generate", "--from-png", str(png), "--out", str(tmp_path / "out")]) == 0
    [made] = [x for x in capsys.readouterr().out.split() if x.endswith(".png")]
    want = TextToImagePipeline.from_pretrained(tiny_pipeline_dir)(
        "red apple", "blurry, green", sampler="ddim", num_inference_steps=3, guidance_scale=4.5, seed=9, eta=0.5,
        timestep_spacing="trailing", height=32, width=32).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(made)), np.asarray(want))
