"""agent/perfdata.py: Nagios plugin output, text and performance data."""

from __future__ import annotations

from agent.perfdata import parse_perfdata, parse_plugin_output


def item(label: str, value: float | None, uom: str = "", warn=None, crit=None, min=None, max=None):
    return {
        "label": label,
        "value": value,
        "uom": uom,
        "warn": warn,
        "crit": crit,
        "min": min,
        "max": max,
    }


def test_text_without_perfdata_is_returned_as_is() -> None:
    assert parse_plugin_output("PING OK - Packet loss = 0%\n") == ("PING OK - Packet loss = 0%", [])


def test_empty_output() -> None:
    assert parse_plugin_output("") == ("", [])


def test_first_line_perfdata_is_split_off() -> None:
    text, perf = parse_plugin_output(
        "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968"
    )
    assert text == "DISK OK - free space: / 3326 MB (56%);"
    assert perf == [item("/", 2643.0, "MB", 5948.0, 5958.0, 0.0, 5968.0)]


def test_guidelines_example_with_long_output_and_perfdata_on_several_lines() -> None:
    output = (
        "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968\n"
        "/ 15272 MB (77%);\n"
        "/boot 68 MB (69%);\n"
        "/home 69357 MB (27%);\n"
        "/var/log 819 MB (84%); | /boot=68MB;88;93;0;98\n"
        "/home=69357MB;253404;253409;0;253414\n"
        "/var/log=818MB;970;975;0;980\n"
    )
    text, perf = parse_plugin_output(output)
    assert text == (
        "DISK OK - free space: / 3326 MB (56%);\n"
        "/ 15272 MB (77%);\n"
        "/boot 68 MB (69%);\n"
        "/home 69357 MB (27%);\n"
        "/var/log 819 MB (84%);"
    )
    assert [p["label"] for p in perf] == ["/", "/boot", "/home", "/var/log"]
    assert perf[3] == item("/var/log", 818.0, "MB", 970.0, 975.0, 0.0, 980.0)


def test_quoted_labels_may_hold_spaces_equals_and_escaped_quotes() -> None:
    _, perf = parse_plugin_output("OK | 'free space'=10GB 'it''s'=1 'a=b'=2")
    assert [p["label"] for p in perf] == ["free space", "it's", "a=b"]
    assert perf[0]["uom"] == "GB"


def test_units_and_number_forms() -> None:
    items, problems = parse_perfdata("t=0.004s pct=99.5% c=12345c neg=-3 e=1e3B dot=.5")
    assert problems == []
    assert [(p["value"], p["uom"]) for p in items] == [
        (0.004, "s"),
        (99.5, "%"),
        (12345.0, "c"),
        (-3.0, ""),
        (1000.0, "B"),
        (0.5, ""),
    ]


def test_value_u_means_unknown() -> None:
    _, perf = parse_plugin_output("UNKNOWN | rta=U;100;500;0")
    assert perf == [item("rta", None, "", 100.0, 500.0, 0.0, None)]


def test_ranges_are_kept_as_strings_and_plain_numbers_as_floats() -> None:
    _, perf = parse_plugin_output("OK | a=5;@10:20;~:5 b=1;10:;20 c=2;-5:5;3.5")
    assert (perf[0]["warn"], perf[0]["crit"]) == ("@10:20", "~:5")
    assert (perf[1]["warn"], perf[1]["crit"]) == ("10:", 20.0)
    assert (perf[2]["warn"], perf[2]["crit"]) == ("-5:5", 3.5)


def test_missing_and_trailing_fields_are_none() -> None:
    _, perf = parse_plugin_output("OK | a=1;;;; b=2; c=3;;;0;")
    assert perf == [item("a", 1.0), item("b", 2.0), item("c", 3.0, min=0.0)]


def test_malformed_items_are_skipped_and_named_without_losing_the_good_ones() -> None:
    text, perf = parse_plugin_output("OK - fine | good=1 bad novalue= =5 x=1.2.3 w=1;abc y=2")
    assert [p["label"] for p in perf] == ["good", "y"]
    first, note = text.split("\n")
    assert first == "OK - fine"
    assert note.startswith("(ignored malformed perfdata: ")
    for raw in ("bad", "novalue=", "=5", "x=1.2.3", "w=1;abc"):
        assert repr(raw) in note or raw in note


def test_unterminated_quote_does_not_raise() -> None:
    text, perf = parse_plugin_output("OK | a=1 'broken label=3 b=4")
    assert perf == [item("a", 1.0)]
    assert "ignored malformed perfdata" in text


def test_too_many_fields_is_malformed() -> None:
    text, perf = parse_plugin_output("OK | a=1;2;3;4;5;6")
    assert perf == []
    assert "a=1;2;3;4;5;6" in text


def test_note_is_bounded_for_huge_garbage() -> None:
    garbage = " ".join(f"junk{i}" + "x" * 100 for i in range(500))
    text, perf = parse_plugin_output(f"OK | {garbage}")
    assert perf == []
    assert len(text) < 500
    assert "and 495 more" in text


def test_no_perfdata_lines_after_the_first_pipe_in_long_output_are_text() -> None:
    text, perf = parse_plugin_output("OK\nline 2\nline 3 | a=1\nb=2")
    assert text == "OK\nline 2\nline 3"
    assert [p["label"] for p in perf] == ["a", "b"]
