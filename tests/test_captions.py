"""Captions per scene: the captioners (real transformers model code on tiny random weights,
saved by save_pretrained, with real tokenizers), the captions file, the scenes' pictures, the
per-scene prompts in uav.Upscale and its chunk cache, and the front ends' refusals."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import vapoursynth as vs
from captioner_models import tiny_florence2, tiny_llava
from clips import AIGC, ANIMATION, MOVIE, framemd5, splice
from conftest import MODEL_DIR

from vs_uav.app.captions import CaptionJob, CaptionJobError, check_captions, read_clip, run_captions
from vs_uav.engine import captioner as captioners
from vs_uav.engine.captioner import LLAVA_GENERATION, LLAVA_PROMPT, clean_caption, load_captioner, official_resize
from vs_uav.media.captions import (CaptionsError, SceneCaption, apply_captions, candidates, pick_frame, picture_of,
                                   read_captions, rgb24, write_captions)
from vs_uav.vsfilter.upscale import PROMPT_PROP, upscale
from vs_uav.weights.captioners import CAPTIONERS, check_captioner_folder, verify_captioner_folder
from vs_uav.weights.folder import WeightsError

core = vs.core
MAKERS = {"florence-2": lambda f: tiny_florence2(f, seed=1), "llava-1.5": tiny_llava}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("captioners")
    return {name: make(root / name) for name, make in MAKERS.items()}


@pytest.fixture(scope="module")
def spliced(tmp_path_factory) -> tuple[Path, list[int]]:
    """Three shots of the shared videos, 64x48, with their cut frames."""
    out = tmp_path_factory.mktemp("spliced") / "spliced.mp4"
    cuts = splice(out, [(ANIMATION, 0, 14), (AIGC, 0, 12), (MOVIE, 5, 14)], (64, 48), audio=False)
    return out, cuts


@pytest.fixture(autouse=True)
def caption_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UAV_CAPTION_CACHE", str(tmp_path / "caption-cache"))


def real_picture() -> np.ndarray:
    clip = core.bs.VideoSource(str(ANIMATION))
    return picture_of(rgb24(clip), 40)


# -- the captioners --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MAKERS))
def test_each_captioner_loads_from_its_folder_and_captions_a_real_frame_deterministically(folders, name):
    picture = real_picture()
    assert picture.shape == (240, 320, 3) and picture.dtype == np.uint8
    first = load_captioner(name, folders[name], "cpu")
    caption = first.caption(picture)
    assert caption and caption == first.caption(picture)  # greedy (Florence-2) or a fixed seed (LLaVA)
    first.close()
    again = load_captioner(name, folders[name], "cpu")
    assert again.caption(picture) == caption  # a new process' load, the same caption
    assert "\n" not in caption and "\t" not in caption


def test_llava_asks_the_official_question_in_the_official_conversation(folders):
    assert LLAVA_PROMPT == ("A chat between a curious user and an artificial intelligence assistant. The assistant "
                            "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
                            "Describe this image and its style in a very detailed manner. ASSISTANT:")
    assert LLAVA_GENERATION == {"do_sample": True, "temperature": 0.2, "top_p": 0.7, "num_beams": 1,
                                "max_new_tokens": 64}
    picture = real_picture()
    resized = official_resize(picture)
    assert resized.shape == (512, 683, 3) and resized.dtype == np.uint8  # 512 on the short side, as the official
    # What the model is given: the conversation's tokens around the image's, as the processor makes them.
    captioner = load_captioner("llava-1.5", folders["llava-1.5"], "cpu")
    seen = {}
    generate = captioner.model.generate

    def spy(**inputs):
        seen.update(inputs)
        return generate(**inputs)

    captioner.model.generate = spy
    captioner.caption(picture)
    text = captioner.processor.tokenizer.decode(seen["input_ids"][0])
    assert text.replace("<image>", "") == LLAVA_PROMPT.replace("<image>", "")
    assert seen["max_new_tokens"] == 64 and seen["temperature"] == 0.2 and seen["top_p"] == 0.7


def test_captions_are_cleaned_to_one_line():
    assert clean_caption("The image shows a koala\nsitting in a tree.") == "A koala sitting in a tree"
    assert clean_caption("  In this picture is an old\tstreet at night,  ") == "An old street at night"
    assert clean_caption("\x00\ufffd") == ""


def test_a_damaged_or_incomplete_captioner_folder_is_named_in_one_line(folders, tmp_path):
    spec = CAPTIONERS["florence-2"]
    verify_captioner_folder(folders["florence-2"], spec)
    broken = shutil.copytree(folders["florence-2"], tmp_path / "f")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(WeightsError, match=r"tokenizer\.json: file is missing; run `uav download --captioner florence-2`"):
        check_captioner_folder(broken, spec)
    broken = shutil.copytree(folders["florence-2"], tmp_path / "g")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupted weight file"):
        verify_captioner_folder(broken, spec)
    with pytest.raises(WeightsError, match="model_type 'llava'; captioner 'florence-2' is a 'florence2' model"):
        check_captioner_folder(folders["llava-1.5"], spec)


def test_a_tensor_of_another_shape_is_found_by_verifying(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(folders["llava-1.5"], tmp_path / "l")
    tensors = load_file(broken / "model.safetensors")
    key = next(k for k in sorted(tensors) if tensors[k].ndim == 2)
    tensors[key] = tensors[key][:-1]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"tensors missing from the weight files .*uav download --captioner llava-1.5"):
        verify_captioner_folder(broken, CAPTIONERS["llava-1.5"])


# -- the captions file and the scenes' pictures ----------------------------------------------------

def test_the_captions_file_reads_back_and_refuses_bad_lines_naming_file_and_line(tmp_path):
    path = write_captions(tmp_path / "c.tsv", [SceneCaption(0, "00:00:00:00", 2, "a koala"),
                                               SceneCaption(14, "00:00:00:14", 16, ""),
                                               SceneCaption(26, "00:00:01:01", 28, "an old\tstreet")])
    assert read_captions(path, 40, [0, 14, 26]) == [SceneCaption(0, "00:00:00:00", 2, "a koala"),
                                                    SceneCaption(14, "00:00:00:14", 16, ""),
                                                    SceneCaption(26, "00:00:01:01", 28, "an old street")]
    text = path.read_text()
    cases = {
        text.replace("14\t00:00:00:14", "15\t00:00:00:15"): r"line 4: frame 15 is not a scene start \(the scenes "
                                                             r"start at 0, 14, 26\)",
        text.replace("26\t00:00:01:01\t28\t", "26 00:00:01:01 28 "): r"line 5: '26 00:00:01:01 28 an old street' has "
                                                                   "no tabs",
        text.replace("\n14\t", "\nxiv\t"): r"line 4: frame 'xiv'; accepted: frame<TAB>timecode",
        text.replace("26\t", "10\t"): r"line 5: frame 10 after frame 14",
    }
    for i, (bad, message) in enumerate(cases.items()):
        (tmp_path / f"bad{i}.tsv").write_text(bad)
        with pytest.raises(CaptionsError, match=f"{re.escape(str(tmp_path / f'bad{i}.tsv'))} {message}"):
            read_captions(tmp_path / f"bad{i}.tsv", 40, [0, 14, 26])
    with pytest.raises(CaptionsError, match="line 5: frame 26; accepted: a frame of the clip"):
        read_captions(path, 20)
    with pytest.raises(CaptionsError, match=r"captions file .*missing.tsv: no such file"):
        read_captions(tmp_path / "missing.tsv")
    clip = core.std.BlankClip(length=20)
    with pytest.raises(CaptionsError, match=r"^apply_captions: .*c\.tsv line 5: frame 26; accepted: a frame"):
        apply_captions(clip, path)
    from vs_uav.app.captions import default_captions_path

    assert default_captions_path(Path("/a/out.mkv")) == Path("/a/out.captions.tsv")
    assert default_captions_path(Path("/a/scan/%07d.dpx")) == Path("/a/scan/captions.tsv")


def test_the_picture_of_a_scene_is_the_sharpest_never_a_fade(tmp_path):
    out = tmp_path / "fade.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(ANIMATION), "-vf", "trim=start_frame=20:end_frame=44,"
                    "setpts=PTS-STARTPTS,scale=120:88,fade=in:0:10", "-c:v", "libx264", "-crf", "12", str(out)],
                   check=True)
    rgb = rgb24(core.bs.VideoSource(str(out)))
    pictures = {n: picture_of(rgb, n) for n in range(rgb.num_frames)}
    # The official picture (the first frame) is black here; the chosen one is past the fade.
    assert pictures[0].mean() < 20
    chosen = pick_frame({n: pictures[n] for n in candidates(0, rgb.num_frames)})
    assert chosen >= 10
    assert candidates(0, 24) == [2, 7, 12, 16, 21] and candidates(5, 8) == [5, 6, 7]


def test_one_caption_per_scene_at_its_first_frame_then_all_from_the_cache(folders, spliced, tmp_path):
    video, cuts = spliced
    cut_file = tmp_path / "cuts.txt"
    cut_file.write_text("\n".join(map(str, cuts)))
    job = CaptionJob(video, tmp_path / "spliced.captions.tsv", "florence-2", folders["florence-2"],
                     scene_cuts=str(cut_file))
    seen = []
    first = run_captions(job, lambda done, total: seen.append((done, total)))
    scenes = read_captions(first.path)
    assert [s.frame for s in scenes] == [0, *cuts] and seen == [(1, 3), (2, 3), (3, 3)]
    assert [s.timecode for s in scenes] == ["00:00:00:00", "00:00:00:14", "00:00:01:01"]  # 25 fps
    assert all(s.caption for s in scenes) and first.captioned == 3
    assert all(s.frame <= s.picture < e for s, e in zip(scenes, [*cuts, 40]))
    again = run_captions(job)
    assert again.captioned == 0 and read_captions(again.path) == scenes
    assert "(3 from the cache)" in again.summary


def test_an_unknown_captioner_or_an_absent_folder_is_refused_before_anything_is_read(tmp_path):
    with pytest.raises(CaptionJobError, match=r"--captioner 'blip'; accepted: florence-2, florence-2-large, llava-1.5"):
        run_captions(CaptionJob(tmp_path / "none.mp4", tmp_path / "c.tsv", "blip"))
    with pytest.raises(CaptionJobError, match=r"captioner 'llava-1.5' is not there; run `uav download --captioner"):
        run_captions(CaptionJob(tmp_path / "none.mp4", tmp_path / "c.tsv", "llava-1.5", tmp_path / "nowhere"))


def test_an_output_folder_that_is_missing_is_said_before_any_scene_is_captioned(folders, spliced, tmp_path):
    video, _ = spliced
    with pytest.raises(CaptionJobError, match=r"^-o .*/gone/c\.tsv: the folder .*/gone is missing"):
        run_captions(CaptionJob(video, tmp_path / "gone" / "c.tsv", "florence-2", folders["florence-2"]))


# -- per-scene prompts in the filter -------------------------------------------------------------

KW = dict(model=str(MODEL_DIR), prompt="a film", steps=2, guidance_scale=4.0, chunk_size=8, lookahead=2,
          propagation_steps=[1], flow="dis")


def encoded_prompts(caplog) -> dict[tuple[int, int], str]:
    found = {}
    for record in caplog.records:
        m = re.match(r"frames (\d+)-(\d+): prompt '(.*)'$", record.getMessage())
        if m:
            found[(int(m[1]), int(m[2]))] = m[3]
    return found


def cached_chunks(caplog) -> set[int]:
    return {int(m[1]) for r in caplog.records if (m := re.search(r"chunk (\d+)/\d+ \(frames .*\) read from",
                                                                 r.getMessage()))}


def small_clip(video: Path) -> vs.VideoNode:
    clip = core.bs.VideoSource(str(video))
    return core.resize.Bicubic(clip, 16, 16, format=vs.RGBS, matrix_in_s="709")


def test_each_scene_is_denoised_with_its_caption_and_an_edit_recomputes_only_its_chunks(spliced, tmp_path, caplog):
    video, cuts = spliced
    assert cuts == [14, 26]
    marked = core.std.SetFrameProps(small_clip(video)[14], _SceneChangePrev=1)
    clip = small_clip(video)[:14] + marked + small_clip(video)[15:26] + \
        core.std.SetFrameProps(small_clip(video)[26], _SceneChangePrev=1) + small_clip(video)[27:]
    path = write_captions(tmp_path / "c.tsv", [SceneCaption(0, "", None, "a cartoon"), SceneCaption(14, "", None, ""),
                                               SceneCaption(26, "", None, "an old street")])
    captioned = apply_captions(clip, path)
    assert captioned.get_frame(3).props[PROMPT_PROP] == "a cartoon" and PROMPT_PROP not in captioned.get_frame(20).props
    caplog.set_level(logging.DEBUG, logger="vs_uav")
    settings = dict(KW, cache_dir=str(tmp_path / "cache"))
    out = upscale(captioned, **settings)
    before = [np.asarray(f[0]).copy() for f in out.frames(close=True)]
    prompts = encoded_prompts(caplog)
    for (a, b), prompt in prompts.items():  # each piece's frames lie in one scene, with its prompt
        scene = 0 if b < 14 else 1 if b < 26 else 2
        assert a >= [0, 14, 26][scene] and prompt == ["a cartoon", "a film", "an old street"][scene], (a, b, prompt)
    assert {p for p in prompts.values()} == {"a cartoon", "a film", "an old street"}
    # The third scene's caption edited: chunks 1-3 (frames 0-23) come from the cache.
    caplog.clear()
    write_captions(path, [SceneCaption(0, "", None, "a cartoon"), SceneCaption(14, "", None, ""),
                          SceneCaption(26, "", None, "a rainy street")])
    after = [np.asarray(f[0]).copy() for f in upscale(apply_captions(clip, path), **settings).frames(close=True)]
    assert cached_chunks(caplog) == {1, 2, 3}
    # Chunk 4 (frames 24-31) holds the end of scene 2 too: its piece is denoised again, as it was.
    assert encoded_prompts(caplog) == {(24, 25): "a film", (26, 33): "a rainy street", (32, 39): "a rainy street"}
    assert all(np.array_equal(x, y) for x, y in zip(before[:24], after[:24]))
    assert not all(np.array_equal(x, y) for x, y in zip(before[26:], after[26:]))


def test_every_scene_captioned_alike_renders_as_that_one_prompt(spliced, tmp_path):
    video, _ = spliced
    cut = core.std.SetFrameProps(small_clip(video)[14], _SceneChangePrev=1)
    clip = small_clip(video)[:14] + cut + small_clip(video)[15:20]
    path = write_captions(tmp_path / "c.tsv", [SceneCaption(0, caption="a street"),
                                               SceneCaption(14, caption="a street")])
    one = upscale(clip, **dict(KW, prompt="a street"))
    captioned = upscale(apply_captions(clip, path), **KW)
    for a, b in zip(one.frames(close=True), captioned.frames(close=True)):
        assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_a_prompt_change_inside_a_scene_starts_a_new_piece_there(spliced, tmp_path, caplog):
    video, _ = spliced
    clip = small_clip(video)[:12]
    path = write_captions(tmp_path / "c.tsv", [SceneCaption(0, "", None, "a cartoon"),
                                               SceneCaption(5, "", None, "a cartoon cat")])
    caplog.set_level(logging.DEBUG, logger="vs_uav")
    out = upscale(apply_captions(clip, path), **dict(KW, scene_change=False))
    out.get_frame(3), out.get_frame(9)
    pieces = encoded_prompts(caplog)
    assert pieces == {(0, 4): "a cartoon", (5, 11): "a cartoon cat"}  # one chunk of 12, split at 5


def test_captions_are_checked_against_the_scenes_before_the_model_loads(spliced, tmp_path):
    video, cuts = spliced
    cut_file = tmp_path / "cuts.txt"
    cut_file.write_text("\n".join(map(str, cuts)))
    clip, _ = read_clip(video)
    path = write_captions(tmp_path / "c.tsv", [SceneCaption(0, caption="a"), SceneCaption(14, caption="b")])
    assert check_captions(path, clip, str(cut_file), 0.1) == 2
    write_captions(path, [SceneCaption(0, caption="a"), SceneCaption(13, caption="b")])
    with pytest.raises(CaptionJobError, match=r"c\.tsv line 4: frame 13 is not a scene start \(the scenes start at "
                                              r"0, 14, 26\)"):
        check_captions(path, clip, str(cut_file), 0.1)


def test_the_public_name_and_the_filters_prop_agree():
    import vs_uav
    from vs_uav.media import captions

    assert vs_uav.apply_captions is captions.apply_captions and PROMPT_PROP == "UAVPrompt"
    assert json.dumps(sorted(captioners.QUANTIZE)) == '["4bit", "8bit", "none"]'


def test_the_cli_refuses_an_unknown_captioner_and_a_bad_captions_file_in_one_line(spliced, tmp_path):
    video, _ = spliced
    run = subprocess.run([sys.executable, "-m", "vs_uav", "caption", str(video), "--captioner", "blip"],
                         capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        "uav caption: --captioner 'blip'; accepted: florence-2, florence-2-large, llava-1.5"]
    (tmp_path / "c.tsv").write_text("frame\ttimecode\tpicture\tcaption\n0\t\t\ta\nseven\t\t\tb\n")
    run = subprocess.run([sys.executable, "-m", "vs_uav", "upscale", str(video), "-o", str(tmp_path / "o.mkv"),
                          "--model", str(MODEL_DIR), "--captions", str(tmp_path / "c.tsv")],
                         capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == (
        f"uav upscale: {tmp_path / 'c.tsv'} line 3: frame 'seven'; accepted: frame<TAB>timecode<TAB>picture<TAB>"
        "caption, the frame a whole number")
    assert not (tmp_path / "o.mkv").exists()


# -- the command line -----------------------------------------------------------------------------

def uav(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "vs_uav", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_uav_caption_writes_one_line_per_detected_scene_and_a_summary(folders, spliced, tmp_path, capsys):
    from vs_uav.app.cli import main
    from vs_uav.vsfilter.scenes import cuts_of

    video, _ = spliced
    out = tmp_path / "captions.tsv"
    args = ["caption", str(video), "-o", str(out), "--captioner-dir", str(folders["florence-2"])]
    assert main([*args, "--device", "cpu"]) == 0
    said = capsys.readouterr()
    starts = [0, *cuts_of(core.bs.VideoSource(str(video)), "auto", 0.1)]
    assert [s.frame for s in read_captions(out)] == starts and len(starts) >= 2
    assert re.fullmatch(rf"uav caption: {len(starts)} scenes captioned into {re.escape(str(out))} \(0 from the "
                        r"cache\) in [0-9.]+ s", said.out.splitlines()[0])
    assert f"scene {len(starts)}/{len(starts)}" in said.err
    assert f"--captions {out}" in said.out
    written = read_captions(out)
    assert main(args) == 0 and f"({len(starts)} from the cache)" in capsys.readouterr().out
    assert main([*args, "--no-cache"]) == 0 and "(0 from the cache)" in capsys.readouterr().out
    assert read_captions(out) == written  # deterministic


def test_uav_script_applies_a_captions_file_and_refuses_prompt_auto(spliced, tmp_path):
    video, _ = spliced
    captions = write_captions(tmp_path / "c.tsv", [SceneCaption(0, caption="a cartoon")])
    run = uav("script", str(video), "--script", str(tmp_path / "s.vpy"), "--captions", str(captions))
    assert run.returncode == 0, run.stderr
    script = (tmp_path / "s.vpy").read_text()
    assert f"clip = vs_uav.apply_captions(clip, {str(captions)!r})" in script
    assert script.index("vs_uav.mark_cuts(") < script.index("apply_captions(") < script.index("Upscale(")
    run = uav("script", str(video), "--prompt", "auto")
    assert run.returncode == 1 and run.stderr.strip() == (
        "uav script: --prompt auto: accepted by uav upscale; for a script, run `uav caption` first and pass "
        "--captions FILE")


def test_download_a_captioner_from_a_folder_and_doctor_reports_it(folders, tmp_path, monkeypatch, capsys):
    from vs_uav.app.cli import main
    from vs_uav.app.doctor import check_captioners

    dest = tmp_path / "captioners"
    monkeypatch.setenv("UAV_CAPTIONER_DIR", str(dest))
    assert check_captioners().line().startswith(f"[warn] captioners: none in {dest}")
    assert main(["download", "--captioner", "florence-2", "--from", str(folders["florence-2"])]) == 0
    assert f"{dest / 'florence-2'}: captioner 'florence-2' complete and verified" in capsys.readouterr().err
    verify_captioner_folder(dest / "florence-2", CAPTIONERS["florence-2"])
    weights = "model.safetensors"  # hard-linked, not copied, on the same filesystem
    assert (dest / "florence-2" / weights).stat().st_ino == (folders["florence-2"] / weights).stat().st_ino
    assert main(["download", "--captioner", "florence-2", "--from", str(folders["florence-2"])]) == 0
    assert "already complete and verified; nothing to do" in capsys.readouterr().err
    assert check_captioners().line() == f"[ ok ] captioners: florence-2 in {dest}"
    with pytest.raises(SystemExit, match="model_type 'llava'; captioner 'florence-2' is a 'florence2' model"):
        main(["download", "--captioner", "florence-2", "--from", str(folders["llava-1.5"]), "--dir",
              str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_upscale_prompt_auto_captions_then_renders_and_keeps_an_edited_file(folders, spliced, tmp_path):
    video, _ = spliced
    root = tmp_path / "captioners"
    shutil.copytree(folders["florence-2"], root / "florence-2")
    env = {"UAV_CAPTIONER_DIR": str(root)}
    out = tmp_path / "out.mkv"
    args = ["upscale", str(video), "-o", str(out), "--model", str(MODEL_DIR), "--steps", "1", "--flow", "dis",
            "--codec", "ffv1", "--prompt", "auto", "--frames", "0-15"]
    run = uav(*args, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    captions = tmp_path / "out.captions.tsv"
    scenes = read_captions(captions)
    assert scenes[0].caption and f"captioning the scenes of spliced.mp4 with florence-2 into {captions}" in run.stderr
    automatic = framemd5(out)
    edited = [SceneCaption(s.frame, s.timecode, s.picture, "a hand-written caption") for s in scenes]
    write_captions(captions, edited)
    out.unlink()
    run = uav(*args, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"using the captions in {captions} (delete it to caption again)" in run.stderr
    assert read_captions(captions) == edited
    assert framemd5(out) != automatic  # the edited captions were rendered
    run = uav(*args[:-4], "--captioner", "florence-2")
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == (
        "uav upscale: --captioner florence-2: accepted with --prompt auto only (or `uav caption`)")


def test_the_captioners_memory_budget_and_bits_are_checked_before_anything_is_read(folders, tmp_path):
    import torch

    from vs_uav.engine.captioner import weight_bytes
    from vs_uav.weights.folder import tensor_shapes

    need = weight_bytes(folders["llava-1.5"], torch.float32)
    shapes = tensor_shapes(folders["llava-1.5"] / "model.safetensors").values()
    assert need == 4 * sum(int(np.prod(s)) for s in shapes) and weight_bytes(folders["llava-1.5"], torch.float32,
                                                                             "4bit") == need // 8
    job = CaptionJob(tmp_path / "none.mp4", tmp_path / "c.tsv", "llava-1.5", folders["llava-1.5"], device="cpu",
                     max_memory=need / 2**30 / 2)
    with pytest.raises(CaptionJobError, match=r"^--max-memory [0-9.e-]+: captioner 'llava-1.5' needs [0-9.]+ MiB "
                                              r"\(float weights\); accepted: a budget that holds it, --captioner-bits "
                                              r"8bit \([0-9.]+ MiB\) or --captioner-bits 4bit"):
        run_captions(job)
    job = CaptionJob(tmp_path / "none.mp4", tmp_path / "c.tsv", "llava-1.5", folders["llava-1.5"], device="cpu",
                     bits="8bit")
    with pytest.raises(CaptionJobError, match=r"^--captioner-bits 8bit: accepted on a CUDA device only "
                                              r"\(bitsandbytes\), not on cpu$"):
        run_captions(job)
    assert not (tmp_path / "c.tsv").exists()


def test_a_queue_refuses_one_captions_file_for_many_sources_and_its_record_follows_the_file(spliced, tmp_path):
    from vs_uav.app.job import JobError, UpscaleJob
    from vs_uav.app.queue import _fingerprint, plan_queue
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.settings import UpscaleSettings

    video, _ = spliced
    other = shutil.copy(video, tmp_path / "other.mp4")
    captions = write_captions(tmp_path / "c.tsv", [SceneCaption(0, caption="a cartoon")])
    encoder = EncoderSettings(captions=str(captions))
    with pytest.raises(JobError, match=r"^--captions .*c\.tsv: accepted for one source"):
        plan_queue([str(video), str(other)], UpscaleSettings(), encoder, str(tmp_path / "out"))
    job = UpscaleJob.create(video, UpscaleSettings(), encoder, tmp_path / "o.mkv")
    before = _fingerprint(job)
    write_captions(captions, [SceneCaption(0, caption="a koala")])
    assert _fingerprint(job) != before  # an edited captions file is not a finished output any more


def test_the_cluster_job_key_follows_the_captions_file_and_the_captioner_device(tmp_path):
    from types import SimpleNamespace

    from vs_uav.app.cluster.driver import _job_key
    from vs_uav.engine.captioner import captioner_device
    from vs_uav.media.encoder import EncoderSettings

    script = tmp_path / "upscale.vpy"
    script.write_text("clip = vs_uav.apply_captions(clip, 'c.tsv')\n")
    captions = write_captions(tmp_path / "c.tsv", [SceneCaption(0, caption="a cartoon")])
    job = SimpleNamespace(script=script, source=ANIMATION, output=tmp_path / "o.mkv",
                          encoder=EncoderSettings(captions=str(captions)))
    before = _job_key(job, ["-c:v", "ffv1"])
    write_captions(captions, [SceneCaption(0, caption="a koala")])
    assert _job_key(job, ["-c:v", "ffv1"]) != before  # the segments are rendered again
    import torch

    if not torch.cuda.is_available():
        assert captioner_device("auto").type == "cpu" and str(captioner_device("cpu")) == "cpu"
