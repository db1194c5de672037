"""What `orchestrator failures` makes of text from outside before showing it."""

from orchestrator.triage import EXAMPLE_CHARS, clip, printable


def test_nul_and_control_characters_are_written_out_not_sent_to_the_terminal():
    shown = clip("a\x00b\x1b[2Jc\x07d\x7fe\x9bf")
    assert shown == "a\\x00b\\x1b[2Jc\\x07d\\x7fe\\x9bf"


def test_text_that_reorders_a_line_is_written_out():
    assert clip("invoice \u202egnp.exe") == "invoice \\u202egnp.exe"


def test_lines_and_tabs_become_one_line():
    assert clip("Traceback:\n\tFile x\r\n  ValueError: bad\n") == "Traceback: File x ValueError: bad"


def test_a_long_message_keeps_its_head_and_its_tail():
    shown = clip("start " + "x" * 5000 + " ValueError: the real cause")
    assert len(shown) == EXAMPLE_CHARS
    assert shown.startswith("start xxx") and shown.endswith("ValueError: the real cause") and " … " in shown


def test_markup_stays_text_and_secrets_are_masked():
    assert clip("[bold]x[/bold] postgresql://u:hunter2@db/x") == "[bold]x[/bold] postgresql://u:***@db/x"


def test_nothing_is_an_empty_string():
    assert clip(None) == "" == clip("")


def test_printable_keeps_lines_for_a_prompt():
    assert printable("line 1\r\nline 2\n\tindented \x1b[31m") == "line 1\nline 2\n\tindented \\x1b[31m"
