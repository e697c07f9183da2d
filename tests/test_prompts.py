"""Prompts as people write them: A1111 attention and editing syntax, long prompts, compel, textual
inversion embeddings, LoRA tags, precomputed embeddings. References: A1111's own documented parses
(the examples in its prompt_parser), compel (the library), diffusers' pipelines and loaders."""

import numpy as np
import pytest
import torch

from latentdiff.prompts import extract_lora_tags, parse_attention, prompt_schedule

KW = dict(num_inference_steps=5, guidance_scale=4.0, sampler="ddim", timestep_spacing="trailing", output_type="np")

# A1111's documented parses (the doctest table of modules/prompt_parser.py's parse_prompt_attention)
A1111_ATTENTION = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
]


@pytest.mark.parametrize("text,expected", A1111_ATTENTION)
def test_attention_parse_matches_a1111_documentation(text, expected):
    got = parse_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_more_attention_cases_never_raise():
    assert parse_attention("a BREAK b") == [["a", 1.0], ["BREAK", -1], ["b", 1.0]]
    assert parse_attention("[[low]]") == [["low", pytest.approx(1 / 1.21)]]
    assert parse_attention("") == [["", 1.0]]
    for weird in ["))((", "]][[", "(a:)", "(a:x)", "[a:b", "\\", "((a:1.2):0.5)", "a:b", "(a:1e3)"]:
        pieces = parse_attention(weird)  # documented behaviour, never an exception
        assert all(isinstance(t, str) for t, _ in pieces)


def test_editing_and_alternation_schedules():
    assert prompt_schedule("a [cat:dog:0.5] b", 10) == [(5, "a cat b"), (10, "a dog b")]
    assert prompt_schedule("a [cat:dog:3] b", 10) == [(3, "a cat b"), (10, "a dog b")]
    assert prompt_schedule("[rain|snow]", 4) == [(1, "rain"), (2, "snow"), (3, "rain"), (4, "snow")]
    assert prompt_schedule("a [fog:2] b [x::1]", 4) == [(1, "a  b x"), (2, "a  b "), (4, "a fog b ")]
    assert prompt_schedule("[x (y:1.2) z:w:1]", 2) == [(1, "x (y:1.2) z"), (2, "w")]  # ':' inside () is a weight
    assert prompt_schedule("a [word] (b:1.1)", 3) == [(3, "a [word] (b:1.1)")]        # emphasis, not a schedule


def test_weight_one_and_plain_prompt_encode_identically_and_like_diffusers(tiny_pipe, tiny_pipeline_dir):
    plain = tiny_pipe.encode_prompt(["a blue apple", "cat"])
    same = tiny_pipe.encode_prompt(["a (blue:1.0) apple", "(cat:1)"])
    assert torch.equal(plain, same)
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None, requires_safety_checker=False)
    theirs, _ = sd.encode_prompt(["a blue apple", "cat"], "cpu", 1, False)
    torch.testing.assert_close(plain, theirs, atol=1e-6, rtol=0)
    weighted = tiny_pipe.encode_prompt(["a (blue:1.3) apple", "cat"])
    assert not torch.equal(weighted[0], plain[0]) and torch.equal(weighted[1], plain[1])
    for norm in ("a1111", "comfy"):  # the weighted token changes, and so (a1111: via the mean) maybe others
        w = tiny_pipe.encode_prompt(["a (blue:1.3) apple"], normalization=norm)
        assert (w - plain[:1]).abs().amax(-1)[0, 2] > 1e-4, norm


def test_a1111_normalisation_keeps_the_chunk_mean(tiny_pipe):
    """A1111's "original" weighting: z·w per token (BOS at 0, "a" at 1, "blue" at 2), then the whole
    chunk rescaled to its unweighted mean."""
    plain = tiny_pipe.encode_prompt(["a blue apple"])
    w = tiny_pipe.encode_prompt(["a (blue:1.5) apple"], normalization="a1111")
    weights = torch.ones(1, 77, 1)
    weights[0, 2] = 1.5
    scaled = plain * weights
    torch.testing.assert_close(w, scaled * (plain.mean() / scaled.mean()), atol=1e-6, rtol=1e-5)
    assert (w - scaled).abs().max() > 1e-7  # the mean restoration did something
    none = tiny_pipe.encode_prompt(["a (blue:1.5) apple"], normalization="none")
    assert torch.equal(none, plain)


def test_comfy_weighting_equals_compel(tiny_pipe):
    """For syntax both share (weights > 1: compel masks down-weighted tokens instead), our comfy
    normalisation z_empty + w (z - z_empty) equals compel's output on the same text encoder."""
    compel = pytest.importorskip("compel")
    c = compel.Compel(tokenizer=tiny_pipe.tokenizer, text_encoder=tiny_pipe.text_encoder, truncate_long_prompts=False)
    for ours, theirs in [("a (blue:1.3) apple", "a (blue)1.3 apple"),
                         ("(red heart:1.6), cat", "(red heart)1.6, cat")]:
        a = tiny_pipe.encode_prompt([ours], normalization="comfy")
        b = c(theirs)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    via = tiny_pipe.encode_prompt(["a (blue)1.3 apple"], normalization="compel")  # compel's syntax, by compel
    torch.testing.assert_close(via, c("a (blue)1.3 apple"), atol=0, rtol=0)


def long_prompt(n_words=60):
    return ", ".join(f"word{i} thing" for i in range(n_words))


def test_long_prompt_is_chunked_not_truncated(tiny_pipe, caplog):
    text = long_prompt()
    ids = tiny_pipe.tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > 150
    emb = tiny_pipe.encode_prompt([text])
    assert emb.shape[1] % 77 == 0 and emb.shape[1] >= 3 * 77
    # each chunk is the encoding of its own 77-token sequence, BOS/EOS added per chunk
    from latentdiff.prompts import _chunk_ids, parse_attention, weighted_chunks

    chunks = weighted_chunks(tiny_pipe.tokenizer, parse_attention(text), 75)
    for i, (cids, _) in enumerate(chunks):
        alone = tiny_pipe.text_encoder(torch.tensor([_chunk_ids(tiny_pipe.tokenizer, cids, 75)]))[0]
        torch.testing.assert_close(emb[:, 77 * i:77 * (i + 1)], alone, atol=1e-6, rtol=0)
    # the first chunk ends at a comma (backtracking), not in the middle of "wordN thing"
    comma = tiny_pipe.tokenizer.convert_tokens_to_ids(",</w>")
    assert chunks[0][0][-1] == comma and len(chunks[0][0]) <= 75
    # words after token 77 change the image; the negative prompt is padded to as many chunks
    a = tiny_pipe(text + ", zebra stripes purple", seed=0, **KW).images
    b = tiny_pipe(text + ", apple", seed=0, **KW).images
    same = tiny_pipe(text + ", apple", seed=0, **KW).images
    np.testing.assert_array_equal(b, same)
    assert np.abs(a - b).max() > 1e-4  # (the random tiny model attends weakly to text: 5.7e-4 measured)
    assert "truncated" not in caplog.text


def test_break_starts_a_new_chunk(tiny_pipe):
    assert tiny_pipe.encode_prompt(["red apple BREAK white background"]).shape[1] == 154
    assert tiny_pipe.encode_prompt(["red apple, white background"]).shape[1] == 77


def test_prompt_editing_runs_in_every_step_through_the_denoiser(tiny_pipe):
    steps = 6
    kw = {**KW, "num_inference_steps": steps}
    red = tiny_pipe("red heart", seed=1, **kw).images
    blue = tiny_pipe("blue heart", seed=1, **kw).images
    np.testing.assert_array_equal(tiny_pipe("[red:blue:0] heart", seed=1, **kw).images, blue)
    np.testing.assert_array_equal(tiny_pipe(f"[red:blue:{steps}] heart", seed=1, **kw).images, red)
    half = tiny_pipe("[red:blue:0.5] heart", seed=1, **kw).images
    assert np.abs(half - red).max() > 1e-4 and np.abs(half - blue).max() > 1e-4  # (weak text response: ~5e-4)
    alt = tiny_pipe("[red|blue] heart", seed=1, **kw).images
    assert np.abs(alt - half).max() > 1e-5 and np.abs(alt - red).max() > 1e-5


def test_prompt_embeds_equal_the_text(tiny_pipe):
    emb = tiny_pipe.encode_prompt(["red apple"])
    neg = tiny_pipe.encode_prompt(["blurry"])
    a = tiny_pipe("red apple", negative_prompt="blurry", seed=0, **KW).images
    b = tiny_pipe(None, prompt_embeds=emb, negative_prompt_embeds=neg, seed=0, **KW).images
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="prompt_embeds must be"):
        tiny_pipe(None, prompt_embeds=emb[0], seed=0, **KW)
    with pytest.raises(TypeError, match="prompt must be a string or a list of strings"):
        tiny_pipe(123, seed=0, **KW)
    with pytest.raises(TypeError, match=r"prompt\[1\] must be a string"):
        tiny_pipe(["ok", None], seed=0, **KW)


# ------------------------------------------------------------------ textual inversion


def _random_embedding(pipe, n, seed=0):
    d = pipe.text_encoder.get_input_embeddings().weight.shape[-1]
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 0.5


def test_embedding_we_save_loads_in_diffusers_and_gives_the_same_image(tiny_pipe, tiny_pipeline_dir, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    src = tmp_path / "src.safetensors"
    save_file({"<sks>": _random_embedding(tiny_pipe, 3)}, str(src))  # a 3-vector diffusers-layout file
    assert tiny_pipe.load_textual_inversion(src) == ["<sks>", "<sks>_1", "<sks>_2"]
    ours = tiny_pipe("a <sks> emoji", seed=4, **KW).images
    plain = tiny_pipe("a emoji", seed=4, **KW).images
    assert np.abs(ours - plain).max() > 1e-3  # the vectors are used
    for layout in ("diffusers", "a1111"):
        out = tiny_pipe.save_textual_inversion("<sks>", tmp_path / f"{layout}.safetensors", layout=layout)
        sd = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None,
                                                     requires_safety_checker=False)
        sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config, timestep_spacing="trailing")
        sd.set_progress_bar_config(disable=True)
        if layout == "diffusers":
            sd.load_textual_inversion(str(out))
        else:  # diffusers reads A1111 as a tensor + token; we read the file ourselves
            from latentdiff.pipelines.text_to_image import read_embedding

            token, vec = read_embedding(out, "<sks>")
            sd.load_textual_inversion(vec, token=token)
        theirs = sd("a <sks> emoji", num_inference_steps=5, guidance_scale=4.0, output_type="np",
                    generator=torch.Generator().manual_seed(4), height=32, width=32).images
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_embedding_errors(tiny_pipe, tmp_path):
    from safetensors.torch import save_file

    wide = tmp_path / "wide.safetensors"
    save_file({"emb_params": torch.zeros(2, 999)}, str(wide))
    with pytest.raises(ValueError, match="width 999 but this text encoder's is"):
        tiny_pipe.load_textual_inversion(wide)
    pt = tmp_path / "old.pt"
    torch.save({"string_to_param": {"*": _random_embedding(tiny_pipe, 1)}, "name": "<old>"}, pt)
    with pytest.raises(ValueError, match="allow_pickle"):
        tiny_pipe.load_textual_inversion(pt)
    assert tiny_pipe.load_textual_inversion(pt, allow_pickle=True) == ["<old>"]
    odd = tmp_path / "odd.safetensors"
    save_file({"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}, str(odd))
    with pytest.raises(ValueError, match="not a textual-inversion embedding"):
        tiny_pipe.load_textual_inversion(odd)


# ------------------------------------------------------------------ LoRA tags


def test_lora_tags(tiny_pipe, tmp_path):
    from latentdiff import lora as L

    assert extract_lora_tags("a cat <lora:sym:0.8> face") == ("a cat face", [("sym", 0.8)])
    unet_modules = L.target_module_names(tiny_pipe.unet, L.UNET_ATTENTION_TARGETS)
    state = {}
    g = torch.Generator().manual_seed(0)
    for name in unet_modules:
        mod = tiny_pipe.unet.get_submodule(name)
        state[f"{name}.lora_A.weight"] = torch.randn(2, mod.in_features, generator=g) * 0.3
        state[f"{name}.lora_B.weight"] = torch.randn(mod.out_features, 2, generator=g) * 0.3
        state[f"{name}.alpha"] = torch.tensor(2.0)
    folder = tmp_path / "loras"
    L.save_lora(folder / "sym", state)
    plain = tiny_pipe("red apple", seed=0, **KW).images
    tagged = tiny_pipe("red apple <lora:sym:0.8>", seed=0, lora_dir=folder, **KW)
    assert tagged.parameters[0]["prompt"] == "red apple <lora:sym:0.8>"
    after = tiny_pipe("red apple", seed=0, **KW).images
    np.testing.assert_array_equal(after, plain)  # the tag applied to that call only
    tiny_pipe.load_lora(folder / "sym", scale=0.8)
    explicit = tiny_pipe("red apple", seed=0, **KW).images
    np.testing.assert_allclose(tagged.images, explicit, atol=1e-6)
    assert np.abs(explicit - plain).max() > 1e-3
    with pytest.raises(ValueError, match="must be a plain name"):
        tiny_pipe("x <lora:../sym:1>", lora_dir=folder, **KW)
    with pytest.raises(FileNotFoundError, match="no LoRA named 'nope'.*available: sym"):
        tiny_pipe("x <lora:nope:1>", lora_dir=folder, **KW)
    with pytest.raises(ValueError, match="no LoRA folder is set"):
        tiny_pipe("x <lora:sym:1>", **KW)


def test_cli_prompt_options(tiny_pipe, tiny_pipeline_dir, tmp_path, capsys):
    import json
    from pathlib import Path

    from PIL import Image
    from safetensors.torch import save_file

    from latentdiff.cli import PNG_KEY, main

    emb = tmp_path / "sks.safetensors"
    save_file({"<sks>": _random_embedding(tiny_pipe, 2)}, str(emb))
    argv = ["generate", "a <sks> emoji, (red:1.2)", "--model", str(tiny_pipeline_dir), "--seed", "1", "--steps", "3",
            "--embedding", f"{emb}:<sks>", "--prompt-normalization", "comfy", "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    png = Path(capsys.readouterr().out.split()[-1])
    params = json.loads(Image.open(png).text[PNG_KEY])
    assert params["embeddings"] == [f"{emb}:<sks>"] and params["prompt_normalization"] == "comfy"
    assert main(["generate", "--from-png", str(png), "--out", str(tmp_path / "b")]) == 0
    again = Path(capsys.readouterr().out.split()[-1])
    np.testing.assert_array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(again)))
    assert main(["generate", "x <lora:missing:1>", "--model", str(tiny_pipeline_dir), "--steps", "2",
                 "--out", str(tmp_path / "c")]) == 2
    assert "no LoRA folder is set" in capsys.readouterr().err
