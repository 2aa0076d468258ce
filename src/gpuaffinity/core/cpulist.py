"""Linux cpulist strings ("0-15,32-47") and the sets they name.

Pure functions: no hardware access.  The same grammar serves CPU and NUMA node
lists, sysfs files and the topology file.
"""

from __future__ import annotations

from collections.abc import Iterable

#: no kernel numbers CPUs or nodes this high (x86 NR_CPUS is at most 8192); a bound keeps a hostile range cheap
MAX_NUMBER = 1 << 16


def parse_cpulist(text: str, limit: int = MAX_NUMBER) -> frozenset[int]:
    """Return the numbers a cpulist names; raise ValueError saying what is wrong.

    Accepts what the kernel writes and reads: comma-separated numbers and
    ranges ``a-b``, a range may carry a stride ``a-b:s``; an empty string (or
    only white space) is the empty set.  ``limit``: numbers must be below it
    (checked before a range is expanded, so ``0-999999999`` costs nothing).
    """
    out: set[int] = set()
    text = text.strip()
    if not text:
        return frozenset()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty entry in cpulist {_cut(text)}")
        stride = 1
        if ":" in part:
            part, _, s = part.partition(":")
            stride = _number(s, text, None)
            if stride < 1:
                raise ValueError(f"stride must be at least 1 in cpulist {_cut(text)}")
        if "-" in part:
            a, _, b = part.partition("-")
            lo, hi = _number(a, text, limit), _number(b, text, limit)
            if hi < lo:
                raise ValueError(f"range {part!r} runs backwards in cpulist {_cut(text)}")
            out.update(range(lo, hi + 1, stride))
        else:
            out.add(_number(part, text, limit))
    return frozenset(out)


def _cut(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:80]) + "..."


def _number(s: str, whole: str, limit: int | None) -> int:  # limit None: a stride
    s = s.strip()
    if not (s.isascii() and s.isdigit()) or len(s) > 12:
        raise ValueError(f"{s[:20]!r} is not a CPU number in cpulist {_cut(whole)}")
    n = int(s)
    if limit is not None and n >= limit:
        raise ValueError(f"{n} is past the limit of {limit - 1} in cpulist {_cut(whole)}")
    return n


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
