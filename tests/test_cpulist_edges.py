"""Edge cases of the cpulist and cpumask grammar (core/cpulist.py): exact results at each boundary (strides,
ranges, the limit, digit counts, mask groups), and exact error messages, since the message is what a user
reads.  Expected values come from the docstrings and docs/numa.md, not from running the code.
"""

from __future__ import annotations

import re

import pytest

from gpuaffinity.core.cpulist import format_cpumask, parse_cpulist, parse_cpumask, to_mask_words


def exact(message: str) -> str:
    """A pytest.raises pattern matching exactly this message."""
    return "^" + re.escape(message) + "$"


@pytest.mark.parametrize(("text", "limit", "want"), [
    ("0-3:1", 1 << 16, {0, 1, 2, 3}),        # stride 1 is allowed (the check is "at least 1")
    ("0-6:2", 1 << 16, {0, 2, 4, 6}),
    ("3-3", 1 << 16, {3}),                   # a range of one number is not backwards
    ("000000000001", 1 << 16, {1}),          # up to 12 digits are read
    ("0-3", 4, {0, 1, 2, 3}),                # the last number below the limit
])
def test_parse_cpulist_accepts(text, limit, want):
    """parse_cpulist: strides of 1, one-number ranges, 12-digit numbers and numbers just below the limit."""
    assert parse_cpulist(text, limit) == frozenset(want)


@pytest.mark.parametrize(("text", "limit", "message"), [
    ("0,,1", 1 << 16, "empty entry in cpulist '0,,1'"),
    # the stride is everything after the first colon
    ("0-8:2:3", 1 << 16, "'2:3' is not a CPU number in cpulist '0-8:2:3'"),
    ("0-3:x", 1 << 16, "'x' is not a CPU number in cpulist '0-3:x'"),
    ("0-3:0", 1 << 16, "stride must be at least 1 in cpulist '0-3:0'"),
    # the range's end is everything after the first dash
    ("0-3-5", 1 << 16, "'3-5' is not a CPU number in cpulist '0-3-5'"),
    ("x-3", 1 << 16, "'x' is not a CPU number in cpulist 'x-3'"),
    ("5-3", 1 << 16, "range '5-3' runs backwards in cpulist '5-3'"),
    # both ends of a range, and single numbers, are checked against the limit; the start first
    ("5-6", 4, "5 is past the limit of 3 in cpulist '5-6'"),
    ("0-5", 4, "5 is past the limit of 3 in cpulist '0-5'"),
    ("4", 4, "4 is past the limit of 3 in cpulist '4'"),
    # more than 12 digits is not a number; the bad text is shown cut to 20 characters
    ("0000000000001", 1 << 16, "'0000000000001' is not a CPU number in cpulist '0000000000001'"),
    ("x" * 25, 1 << 16, f"'{'x' * 20}' is not a CPU number in cpulist '{'x' * 25}'"),
])
def test_parse_cpulist_refuses(text, limit, message):
    """parse_cpulist: each malformed list raises ValueError with a message naming the fault and the list."""
    with pytest.raises(ValueError, match=exact(message)):
        parse_cpulist(text, limit)


@pytest.mark.parametrize(("length", "shown"), [
    (80, None),       # up to 80 characters the whole list is shown
    (81, 80),         # past that, its first 80 and "..."
    (120, 80),
])
def test_cpulist_message_cuts_long_lists(length, shown):
    """A message quotes the list whole up to 80 characters, else its first 80 characters and '...'."""
    text = "1," * ((length - 2) // 2) + "x" * (2 + length % 2)
    assert len(text) == length
    quoted = f"'{text}'" if shown is None else f"'{text[:shown]}'..."
    with pytest.raises(ValueError, match=exact(f"'{text.rpartition(',')[2]}' is not a CPU number in cpulist {quoted}")):
        parse_cpulist(text)


def test_to_mask_words():
    """to_mask_words: 64-bit words by default, least significant first; no numbers is one zero word."""
    assert to_mask_words([64]) == [0, 1]
    assert to_mask_words([0, 63]) == [1 | 1 << 63]
    assert to_mask_words([]) == [0]
    assert format_cpumask([]) == "00000000"


@pytest.mark.parametrize(("text", "limit", "want"), [
    ("00000000,00000001", 33, {0}),   # one full group past the first: bits up to 32 are below a limit of 33
    ("ff", 40, set(range(8))),        # one group: no group check beyond the first
    ("FF", 1 << 16, set(range(8))),   # upper-case hex as well as lower
    ("80", 8, {7}),                   # the highest bit just below the limit
])
def test_parse_cpumask_accepts(text, limit, want):
    """parse_cpumask: masks just inside the limit, and hex in either case."""
    assert parse_cpumask(text, limit) == frozenset(want)


@pytest.mark.parametrize(("text", "limit", "message"), [
    ("00000000,00000000", 32, "cpumask '00000000,00000000' has 2 groups: past the limit of 31"),
    ("0000000X", 1 << 16, "'0000000X' is not a group of 32-bit hex digits in cpumask '0000000X'"),
    ("0" * 25, 1 << 16, f"'{'0' * 20}' is not a group of 32-bit hex digits in cpumask '{'0' * 25}'"),
    ("100", 8, "cpumask '100' names a number past the limit of 7"),
])
def test_parse_cpumask_refuses(text, limit, message):
    """parse_cpumask: too many groups for the limit, a bad group, a bit at or past the limit."""
    with pytest.raises(ValueError, match=exact(message)):
        parse_cpumask(text, limit)
