"""Linux cpulist strings ("0-15,32-47") and the sets they name.

Pure functions: no hardware access.  The same grammar serves CPU and NUMA node
lists, sysfs files and the topology file.
"""

from __future__ import annotations

from collections.abc import Iterable

#: What may surround a list in a sysfs file: white space, and the NUL some kernels add after the newline.
_PADDING = " \t\n\r\v\f\0"


def parse_cpulist(text: str) -> frozenset[int]:
    """Return the numbers a cpulist names; raise ValueError saying what is wrong.

    Accepts what the kernel writes and reads: comma-separated numbers and
    ranges ``a-b``, a range may carry a stride ``a-b:s``; an empty string (or
    only white space) is the empty set.  White space and NUL bytes around the
    list are ignored: some kernels end sysfs lists with a NUL after the newline.
    """
    out: set[int] = set()
    text = text.strip(_PADDING)
    if not text:
        return frozenset()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty entry in cpulist {text!r}")
        stride = 1
        if ":" in part:
            part, _, s = part.partition(":")
            stride = _number(s, text)
            if stride < 1:
                raise ValueError(f"stride must be at least 1 in cpulist {text!r}")
        if "-" in part:
            a, _, b = part.partition("-")
            lo, hi = _number(a, text), _number(b, text)
            if hi < lo:
                raise ValueError(f"range {part!r} runs backwards in cpulist {text!r}")
            out.update(range(lo, hi + 1, stride))
        else:
            out.add(_number(part, text))
    return frozenset(out)


def _number(s: str, whole: str) -> int:
    s = s.strip()
    if not s.isdigit():
        raise ValueError(f"{s!r} is not a CPU number in cpulist {whole!r}")
    return int(s)


def format_cpulist(numbers: Iterable[int]) -> str:
    """The shortest cpulist for a set of numbers: ``{0,1,2,5}`` -> ``"0-2,5"``."""
    nums = sorted(set(numbers))
    parts: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(parts)


def to_mask_words(numbers: Iterable[int], bits: int = 64) -> list[int]:
    """Bit masks, least significant word first, as NVML and the kernel use them."""
    nums = list(numbers)
    nwords = max(nums) // bits + 1 if nums else 1
    words = [0] * nwords
    for n in nums:
        words[n // bits] |= 1 << (n % bits)
    return words


def format_cpumask(numbers: Iterable[int]) -> str:
    """The kernel's hex mask form ("ffffffff,ffffffff"), 32-bit groups, most significant first."""
    words = to_mask_words(numbers, 32)
    return ",".join(f"{w:08x}" for w in reversed(words))


def parse_cpumask(text: str) -> frozenset[int]:
    """The numbers a kernel hex mask names (``"00000002,00000001"`` -> ``{0, 33}``); raise ValueError.

    Comma-separated groups of 32 bits, most significant first, as the kernel
    writes ``cpumap``, ``local_cpus`` and ``thread_siblings``: every group but
    the first has 8 hex digits.  White space and NUL bytes around it are ignored.
    """
    text = text.strip(_PADDING)
    if not text:
        return frozenset()
    groups = text.split(",")
    value = 0
    for i, group in enumerate(groups):
        width_ok = 1 <= len(group) <= 8 if i == 0 else len(group) == 8
        if not width_ok or any(ch not in "0123456789abcdefABCDEF" for ch in group):
            raise ValueError(f"{group!r} is not a group of 32-bit hex digits in cpumask {text!r}")
        value = value << 32 | int(group, 16)
    return frozenset(bit for bit in range(value.bit_length()) if value >> bit & 1)
