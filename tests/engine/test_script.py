"""parse_script, Script and render_script: what a DJZ script may say and how it reaches the VibeVoice prompt."""
import pytest

from engine.config import MAX_SPEAKERS
from engine.errors import InvalidRequest
from engine.script import Script, Turn, parse_script, render_script


def test_speaker_labels_give_one_turn_per_line():
    script = parse_script("Speaker 0: Hello there, how are you?\nSpeaker 1: Fine, thanks.\n")
    assert script.turns == (Turn(0, "Hello there, how are you?"), Turn(1, "Fine, thanks."))


def test_speaker_labels_ignore_case_and_spaces():
    script = parse_script("speaker1:Hi.\n  SPEAKER  2 :  Hello.  ")
    assert script.turns == (Turn(1, "Hi."), Turn(2, "Hello."))


def test_djz_1x_bracket_labels_are_read_too():
    script = parse_script("[0] First line.\n[ 1 ]Second line.\nSpeaker 0: Mixed styles.")
    assert script.turns == (Turn(0, "First line."), Turn(1, "Second line."), Turn(0, "Mixed styles."))


def test_unlabelled_line_continues_the_previous_turn_and_blank_lines_are_ignored():
    script = parse_script("Speaker 0: It was a dark\n\n   and stormy night.\nSpeaker 1: Go on.\n\tPlease.")
    assert script.turns == (Turn(0, "It was a dark and stormy night."), Turn(1, "Go on. Please."))


def test_whitespace_inside_text_is_collapsed():
    assert parse_script("Speaker 0:  so \t  many   spaces ").turns == (Turn(0, "so many spaces"),)


def test_script_without_labels_is_one_turn_of_speaker_0():
    script = parse_script("\nJust some text\n  on two lines.\n")
    assert script.turns == (Turn(0, "Just some text on two lines."),)
    assert script.speakers == (0,)


def test_prompt_speakers_are_the_ranks_of_the_script_ids():
    script = parse_script("Speaker 2: Second.\nSpeaker 1: First.\nSpeaker 2: Again.")
    assert script.speakers == (1, 2)
    assert [script.prompt_speaker(turn.speaker) for turn in script.turns] == [1, 0, 1]


def test_prompt_speaker_refuses_an_id_the_script_does_not_use():
    script = parse_script("Speaker 1: Hi.\nSpeaker 3: Hello.")
    with pytest.raises(InvalidRequest, match=r"speaker 2 does not speak.*1, 3"):
        script.prompt_speaker(2)


def test_render_script_writes_speaker_lines_that_parse_back_to_the_same_script():
    script = parse_script("[1] Hi   there.\ncontinued\n[3] Bye.")
    rendered = render_script(script)
    assert rendered == "Speaker 1: Hi there. continued\nSpeaker 3: Bye."
    assert parse_script(rendered) == script


@pytest.mark.parametrize("text", ["", "   \n\t\n  "])
def test_empty_script_is_refused(text):
    with pytest.raises(InvalidRequest, match="script is empty"):
        parse_script(text)


def test_more_speakers_than_the_limit_are_refused_by_name():
    ids = range(10, 10 + MAX_SPEAKERS + 1)
    text = "\n".join(f"Speaker {i}: Line." for i in ids)
    with pytest.raises(InvalidRequest, match=f"{MAX_SPEAKERS + 1} speakers.*{', '.join(map(str, ids))}"):
        parse_script(text)


def test_the_speaker_limit_itself_is_accepted():
    text = "\n".join(f"Speaker {i}: Line." for i in range(MAX_SPEAKERS))
    assert parse_script(text).speakers == tuple(range(MAX_SPEAKERS))


@pytest.mark.parametrize("line", ["Speaker 1:", "Speaker 1:   ", "[1]"])
def test_labelled_line_without_text_is_refused_with_its_line_number(line):
    with pytest.raises(InvalidRequest, match="line 3 labels speaker 1 but has no text"):
        parse_script(f"Speaker 0: Hi.\n\n{line}\nSpeaker 0: Bye.")


def test_text_before_the_first_label_is_refused_with_its_line_number():
    with pytest.raises(InvalidRequest, match="line 2 has no speaker label"):
        parse_script("\nPreamble.\nSpeaker 0: Hi.")


@pytest.mark.parametrize("line", ["Speaker -1: Hi.", "[-2] Hi."])
def test_negative_speaker_ids_are_refused(line):
    with pytest.raises(InvalidRequest, match="line 1 names speaker -[12].*non-negative"):
        parse_script(line)


def test_script_is_a_frozen_value():
    script = Script((Turn(0, "Hi."),))
    with pytest.raises(AttributeError):
        script.turns = ()
