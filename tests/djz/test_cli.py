"""The `djz` command line end to end on a tiny checkpoint: real files in, real audio out, clear one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from djz.cli import main
from engine.audio import write_audio
from engine.config import HOP_SAMPLES, SAMPLE_RATE


@pytest.fixture(scope="module")
def voice_files(tmp_path_factory, voices):
    folder = tmp_path_factory.mktemp("voices")
    paths = {}
    for name, samples in voices.items():
        paths[name] = folder / f"{name}.wav"
        write_audio(paths[name], samples)
    stereo_48k = folder / "stereo48k.flac"
    t = np.arange(48000) / 48000
    sf.write(stereo_48k, np.stack([np.sin(2 * np.pi * 150 * t), np.sin(2 * np.pi * 190 * t)], axis=1) * 0.3, 48000)
    paths["stereo48k"] = stereo_48k
    return paths


@pytest.fixture(scope="module")
def script_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scripts") / "dialogue.txt"
    path.write_text("Speaker 0: Good morning.\nSpeaker 1: Morning! Ready to start?\n")
    return path


def test_make_checkpoint_builds_a_loadable_tiny_model(tmp_path, capsys):
    assert main(["make-checkpoint", "--size", "tiny", "--out", str(tmp_path / "ck"), "--seed", "3"]) == 0
    assert (tmp_path / "ck" / "config.json").exists() and (tmp_path / "ck" / "chat_template.jinja").exists()
    assert "tiny checkpoint" in capsys.readouterr().out


def test_synth_writes_pcm16_audio_of_the_requested_length(tiny_checkpoint, voice_files, script_file, tmp_path, capsys):
    out = tmp_path / "dialogue.wav"
    code = main(["synth", "--model", str(tiny_checkpoint), "--script", str(script_file), "--voice",
                 f"0={voice_files['low']}", "--voice", f"1={voice_files['stereo48k']}", "--out", str(out),
                 "--frames", "5", "--seed", "4"])
    assert code == 0
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (SAMPLE_RATE, 1, "PCM_16", 5 * HOP_SAMPLES)
    assert "seed 4" in capsys.readouterr().out


def test_synth_raw_output_is_the_engines_float_samples(tiny_checkpoint, voice_files, script_file, tmp_path):
    args = ["synth", "--model", str(tiny_checkpoint), "--script", str(script_file), "--voice",
            f"0={voice_files['low']}", "--voice", f"1={voice_files['high']}", "--frames", "3", "--seed", "9", "--raw"]
    main(args + ["--out", str(tmp_path / "a.wav")])
    main(args + ["--out", str(tmp_path / "b.wav"), "--steps", "5", "--cfg", "1.0"])
    a, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    b, _ = sf.read(tmp_path / "b.wav", dtype="float32")
    assert sf.info(tmp_path / "a.wav").subtype == "FLOAT"
    assert a.shape == b.shape == (3 * HOP_SAMPLES,) and not np.allclose(a, b)


def test_synth_reads_the_script_from_stdin(tiny_checkpoint, voice_files, tmp_path):
    out = tmp_path / "stdin.flac"
    done = subprocess.run([sys.executable, "-m", "djz", "synth", "--model", str(tiny_checkpoint), "--script", "-",
                           "--voice", f"0={voice_files['high']}", "--out", str(out), "--frames", "2"],
                          input="Hello from standard input.", text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sf.info(out).frames == 2 * HOP_SAMPLES


@pytest.mark.parametrize("extra, message", [
    (["--voice", "0=VOICE"], "no voice for speaker(s) [1]"),
    (["--voice", "0=VOICE", "--voice", "1=VOICE", "--voice", "2=VOICE"], "speaker(s) [2], who have no line"),
    (["--voice", "zero=VOICE"], "expected SPEAKER=FILE"),
    (["--voice", "0=/nonexistent.wav", "--voice", "1=VOICE"], "/nonexistent.wav"),
    (["--voice", "0=VOICE", "--voice", "1=VOICE", "--runtime", "onnxruntime"], "needs an exported repository"),
    (["--voice", "0=VOICE", "--voice", "1=VOICE", "--steps", "0"], "diffusion_steps"),
])
def test_synth_errors_are_one_clear_line(tiny_checkpoint, voice_files, script_file, tmp_path, capsys, extra, message):
    extra = [e.replace("VOICE", str(voice_files["low"])) for e in extra]
    code = main(["synth", "--model", str(tiny_checkpoint), "--script", str(script_file), "--out",
                 str(tmp_path / "x.wav")] + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("djz: error:") and message in err and "\n" not in err
    assert not (tmp_path / "x.wav").exists()


def test_bench_prints_a_table_and_json(tiny_checkpoint, capsys):
    assert main(["bench", "--model", str(tiny_checkpoint), "--runtime", "torch", "--frames", "4", "--batch", "2",
                 "--voice-seconds", "1"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["streams"] == 2 and figures["frames_per_stream"] == 4
    assert figures["ms_per_frame"] > 0 and figures["rtf"] > 0 and figures["first_audio_ms"] > 0


def test_synth_runs_at_fp8_and_says_how(tiny_checkpoint, voice_files, tmp_path, capsys):
    script = tmp_path / "one.txt"
    script.write_text("Speaker 0: Eight bits.\n")
    assert main(["synth", "--model", str(tiny_checkpoint), "--script", str(script), "--voice",
                 f"0={voice_files['high']}", "--out", str(tmp_path / "fp8.wav"), "--frames", "1",
                 "--precision", "fp8"]) == 0
    assert sf.info(tmp_path / "fp8.wav").frames == HOP_SAMPLES
    assert ("runtime torch on cpu (bfloat16, fp8 LM, diffusion-head FFN and wide tokenizer-block FFN weights (float32 "
            "products))") in capsys.readouterr().out


def test_an_unknown_precision_is_refused_listing_the_choices(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--model", str(tiny_checkpoint), "--precision", "int4"])
    err = capsys.readouterr().err
    assert "--precision: invalid choice: 'int4'" in err and all(name in err for name in ("fp8", "int8", "fp16"))


def test_convert_checkpoint_refuses_a_folder_already_in_the_hf_layout(tiny_checkpoint, tmp_path, capsys):
    assert main(["convert-checkpoint", "--src", str(tiny_checkpoint), "--out", str(tmp_path / "out")]) == 2
    assert "already in the -hf layout" in capsys.readouterr().err
